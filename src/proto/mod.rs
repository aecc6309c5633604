//! Server engines: HTTP/1.1 and HTTP/2 from clients, as bytes on a
//! connection, handed request by request to a `Handler` (the proxy's
//! `handle`; `listen` wires the two). No routes, metrics or plugins here.
//!
//! - `h1`: the HTTP/1.1 server (own fast path, hyper behind it)
//! - `h2`: the own HTTP/2 server and its HPACK codec
//! - `target`: the request target, checked and made canonical once

pub mod h1;
pub mod h2;
mod handler;
pub(crate) mod target;

pub use handler::Handler;

use crate::message::BoxError;
use bytes::Bytes;

/// A client's request body: hyper's, the proxy's own HTTP/2 server's, or
/// none for a bodiless request.
pub enum RequestBody {
    Hyper(hyper::body::Incoming),
    H2(h2::server::RecvBody),
    Empty,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx),
            RequestBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}
