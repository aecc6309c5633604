//! HTTP messages as every engine sees them, server and client side: the
//! body types, the header rules (hop-by-hop, framing), the limits on a head,
//! and the `Date` cache.

pub mod date;
pub mod headers;
pub mod limits;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{Response, StatusCode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body on its way out: to a client, or to an upstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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
