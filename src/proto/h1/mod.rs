//! HTTP/1.1 served to clients: `server` answers simple requests itself and
//! hands everything else, with the bytes already read, to `fallback` (hyper).

pub mod fallback;
pub mod server;
