//! Wire engines: HTTP/1.1 and HTTP/2 as bytes on a connection, and the
//! message types they hand to the proxy. No routes, metrics or plugins here:
//! a server engine hands each request to `crate::proxy::handle`.
//!
//! - `h1`: the HTTP/1.1 server (own fast path, hyper behind it)
//! - `h2`: the own HTTP/2 server and its HPACK codec
//! - `headers`, `target`, `limits`, `date`: what every engine shares

pub mod date;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod limits;
pub(crate) mod target;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{Response, StatusCode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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

/// Header naming why the proxy itself answered.
pub const ERROR_HEADER: &str = "meshcore-error";

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short response the proxy makes itself, with the reason in a header.
pub fn error_response(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    if let Ok(v) = http::HeaderValue::from_str(reason) {
        headers.insert(ERROR_HEADER, v);
    }
    resp
}
