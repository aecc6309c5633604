//! The one rule for sending a request again: only when the upstream did not
//! process it (RFC 9110, 9.2.2).
//! - hyper hands back a request it never wrote, because its pooled
//!   connection (HTTP/1.1 or HTTP/2) had closed: it goes out on the next
//!   connection, whatever its method.
//! - A reused inline HTTP/1.1 connection closes before any answer, or an
//!   HTTP/2 stream is refused (REFUSED_STREAM, or above a GOAWAY's last
//!   stream; RFC 9113, 8.7): only a bodiless idempotent request is sent
//!   again, once, on another connection.

use crate::message::ProxyBody;
use bytes::Bytes;
use hyper::Request;

/// Methods that may be sent again when the upstream turns out not to have
/// processed them: a stale pooled connection, a refused stream (RFC 9110, 9.2.2).
pub(super) fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A bodiless request's head, to send again.
pub(super) fn copy_head(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(crate::message::full(Bytes::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// How the server refused an HTTP/2 stream, unprocessed, if it did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Above the last stream of its GOAWAY: the connection is going away.
    GoAway,
    /// REFUSED_STREAM on this stream only: the connection is still good.
    Stream,
}

pub(super) fn refusal(e: &hyper::Error) -> Option<Refused> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return if h2.is_go_away() && h2.is_remote() {
                Some(Refused::GoAway)
            } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                Some(Refused::Stream)
            } else {
                None
            };
        }
        source = err.source();
    }
    None
}

/// Whether an HTTP/2 server refused the request's stream unprocessed (a
/// GOAWAY above it, or REFUSED_STREAM), so that it may be sent again.
pub fn refused_unprocessed(e: &hyper::Error) -> bool {
    refusal(e).is_some()
}
