//! HTTP/2 (RFC 9113) served to clients by the proxy's own engine, with its
//! HPACK codec (RFC 7541). Upstream HTTP/2 is hyper's (`crate::upstream::h2`).

pub(crate) mod hpack;
pub mod server;
