//! Time: calendar dates, and on the request path a coarse shared clock and timer (no clock read
//! or timer registration per request), and per-request deadlines.

pub mod civil;
pub mod coarse;
pub mod deadline;
