//! Upstream connections, one pool per endpoint: connect (TCP, TLS), HTTP/1.1
//! (driven inline for simple requests, else hyper's sender) and HTTP/2
//! (hyper's, multiplexed), and the one rule for resending (`resend`).

mod error;
pub(crate) mod h1;
mod h2;
mod idle;
mod pool;
mod resend;

pub use error::UpstreamError;
pub use pool::{EndpointPool, Reusable, Sent, Settings, UpstreamBody, UpstreamTls, Wire};
pub use resend::refused_unprocessed;
