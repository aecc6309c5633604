//! Measuring tools that ship inside `_core` but are not on the request path:
//! the load generator behind `meshcore bench`, the micro-benchmark loops
//! for `bench/`, and in-memory TLS handshakes. They stay in the one extension module: a second one would
//! double the link on a 2-core CI box, and they cost the proxy nothing at run
//! time (no code of theirs runs unless a benchmark calls it).

pub mod handshake;
pub mod loadgen;
pub mod microbench;
