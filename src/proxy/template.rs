//! The request template every attempt is built from.

use crate::message::ProxyBody;
use crate::upstream::Wire;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, HeaderValue, Method, Request, Version};

/// The parts of the client's request that every attempt re-sends.
#[derive(Clone)]
pub(super) struct Template {
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    /// Empty when the client sent none.
    pub authority: HeaderValue,
}

impl Template {
    /// What is left once the last attempt took the real one.
    pub fn empty() -> Self {
        Template {
            method: Method::GET,
            path: PathAndQuery::from_static("/"),
            headers: HeaderMap::new(),
            authority: HeaderValue::from_static(""),
        }
    }
}

/// Builds one attempt's request: origin-form URI and a Host header for
/// HTTP/1.1, an absolute URI (which becomes :authority) for HTTP/2.
pub(super) fn build_request(t: Template, body: ProxyBody, wire: Wire) -> Result<Request<ProxyBody>, String> {
    let mut req = Request::new(body);
    *req.method_mut() = t.method;
    *req.headers_mut() = t.headers;
    match wire {
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(t.path);
            if !t.authority.is_empty() {
                req.headers_mut().insert(HOST, t.authority);
            }
        }
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let mut uri = Uri::builder().scheme(Scheme::HTTP).path_and_query(t.path);
            if !t.authority.is_empty() {
                let a = Authority::try_from(t.authority.as_bytes())
                    .map_err(|_| "invalid authority".to_string())?;
                uri = uri.authority(a);
            }
            *req.uri_mut() = uri.build().map_err(|e| format!("invalid request target: {e}"))?;
            req.headers_mut().remove(HOST);
        }
    }
    Ok(req)
}
