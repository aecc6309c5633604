//! What a client connection knows about itself (its peer, what TLS
//! established, its listener), shared by its requests, HTTP or opaque TCP.

pub mod admission;

use crate::metrics::TlsLabel;
use crate::shared::Shared;
use http::HeaderValue;
use std::sync::Arc;

/// What TLS established about the client of a connection.
#[derive(Debug, Clone)]
pub enum PeerTls {
    Plaintext,
    /// TLS without a client certificate (permissive listeners).
    NoIdentity,
    Identity(Arc<str>),
}

impl PeerTls {
    pub fn identity(&self) -> Option<&str> {
        match self {
            PeerTls::Identity(id) => Some(id),
            _ => None,
        }
    }

    /// The `tls` metric label.
    pub fn label(&self) -> TlsLabel {
        match self {
            PeerTls::Plaintext => TlsLabel::False,
            PeerTls::NoIdentity => TlsLabel::NoIdentity,
            PeerTls::Identity(_) => TlsLabel::True,
        }
    }
}

impl ConnContext {
    /// A plaintext outbound connection from 127.0.0.1:50000 on listener 0,
    /// outside any listener: for driving the servers in frame tests and fuzzing.
    #[doc(hidden)]
    pub fn detached(shared: Arc<Shared>, seat: Arc<admission::Seat>) -> Self {
        ConnContext {
            shared,
            listener: 0,
            listener_name: Arc::from("l"),
            direction: Arc::from("outbound"),
            inbound: false,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 50000)),
            tls: PeerTls::Plaintext,
            client_id: None,
            via_gateway: false,
            original_dst: None,
            no_name: Arc::from(""),
            seat,
            idle_timeout: std::time::Duration::from_secs(300),
            tcp: Arc::new(crate::metrics::TcpSeries::default()),
        }
    }
}

/// What a connection knows about itself, shared by its requests.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub listener: usize,
    pub listener_name: Arc<str>,
    pub direction: Arc<str>,
    /// Inbound listeners enforce the authorization policy.
    pub inbound: bool,
    pub peer: std::net::SocketAddr,
    pub tls: PeerTls,
    /// The verified identity as the `meshcore-client-id` value, made once per connection.
    pub client_id: Option<HeaderValue>,
    /// The peer is a gateway this listener trusts to name the original caller.
    pub via_gateway: bool,
    /// Where the client meant to connect, on a transparent listener's
    /// redirected connection (None: it was addressed to the proxy itself).
    pub original_dst: Option<std::net::SocketAddr>,
    /// An empty label value, shared so that requests do not allocate one.
    pub no_name: Arc<str>,
    /// The connection's place in its listener: says when it is idle, and
    /// hears when it must close to make room.
    pub seat: Arc<admission::Seat>,
    /// An HTTP/2 connection with no open stream closes after this.
    pub idle_timeout: std::time::Duration,
    /// The listener's connection counters, for protocol errors and abuse.
    pub tcp: Arc<crate::metrics::TcpSeries>,
}
