//! A request head from decoded HTTP/2 fields, checked as RFC 9113 (8.2, 8.3)
//! asks: pseudo-fields first, once each; no connection-specific fields.

use crate::message::headers::is_connection_specific;
use crate::message::limits::MAX_HEAD_BYTES;
use crate::proto::h2::hpack::{Name, Pseudo};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, COOKIE, HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};

#[derive(Default)]
pub struct Fields {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: bool,
    cookies: usize,
    pub headers: HeaderMap,
    size: usize,
    pub problem: Option<&'static str>,
}

impl Fields {
    /// With a recycled header map when the thread has one.
    pub fn new() -> Self {
        Fields {
            headers: crate::message::headers::map_with_capacity(0),
            ..Fields::default()
        }
    }

    pub fn push(&mut self, name: Name, value: Bytes) {
        self.size += value.len() + 32;
        match name {
            Name::Header(name) => {
                self.size += name.as_str().len();
                if self.size > MAX_HEAD_BYTES {
                    return;
                }
                // RFC 9113, 8.2.1: no leading or trailing whitespace.
                if matches!(value.first().zip(value.last()), Some((a, b)) if is_space(*a) || is_space(*b)) {
                    self.problem = Some("header field value with surrounding whitespace");
                }
                let Ok(value) = HeaderValue::from_maybe_shared(value) else {
                    self.problem = Some("invalid header field value");
                    return;
                };
                if is_connection_specific(&name) || (name == TE && value != "trailers") {
                    self.problem = Some("connection-specific header field");
                }
                self.cookies += usize::from(name == COOKIE);
                self.headers.append(name, value);
            }
            Name::Pseudo(pseudo) => {
                if !self.headers.is_empty() {
                    self.problem = Some("pseudo-header field after a regular one");
                }
                let slot = match pseudo {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Protocol => {
                        self.protocol = true;
                        return;
                    }
                    Pseudo::Status => {
                        self.problem = Some(":status in a request");
                        return;
                    }
                };
                if slot.replace(value).is_some() {
                    self.problem = Some("repeated pseudo-header field");
                }
            }
        }
    }

    pub fn too_large(&self) -> bool {
        self.size > MAX_HEAD_BYTES
    }

    /// Trailers carry no pseudo-fields.
    pub fn into_trailers(self) -> Result<HeaderMap, &'static str> {
        let pseudo = self.method.is_some()
            || self.scheme.is_some()
            || self.path.is_some()
            || self.authority.is_some()
            || self.protocol;
        if pseudo {
            return Err("pseudo-header field in trailers");
        }
        if self.too_large() {
            return Err("trailers too large");
        }
        self.problem.map_or(Ok(self.headers), Err)
    }

    /// Cookie crumbs, split by the client for compression, joined again as
    /// one field for HTTP/1.1 upstreams (RFC 9113, 8.2.3).
    fn join_cookies(&mut self) {
        if self.cookies < 2 {
            return;
        }
        let crumbs: Vec<&[u8]> = self
            .headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let joined = crumbs.join(&b"; "[..]);
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            self.headers.insert(COOKIE, value);
        }
    }

    /// The request head, or why it is malformed; "CONNECT" for a tunnel
    /// request, which the proxy does not serve over HTTP/2.
    pub fn into_request<B>(mut self, body: B) -> Result<Request<B>, &'static str> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        self.join_cookies();
        let method = self.method.ok_or("missing :method")?;
        let method = Method::from_bytes(&method).map_err(|_| "bad :method")?;
        if method == Method::CONNECT || self.protocol {
            return Err("CONNECT");
        }
        let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
            return Err("missing :scheme or :path");
        };
        if path.is_empty() || scheme.is_empty() {
            return Err("empty :path or :scheme");
        }
        let path = PathAndQuery::from_maybe_shared(path).map_err(|_| "bad :path")?;
        let mut uri = http::uri::Parts::default();
        if let Some(authority) = self.authority {
            let authority = Authority::from_maybe_shared(authority).map_err(|_| "bad :authority")?;
            // Routing reads :authority; an upstream may read Host (RFC 9113, 8.3.1).
            if self
                .headers
                .get(HOST)
                .is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes())
            {
                return Err("Host differs from :authority");
            }
            uri.scheme = Some(Scheme::try_from(&scheme[..]).map_err(|_| "bad :scheme")?);
            uri.authority = Some(authority);
        }
        uri.path_and_query = Some(path);
        let uri = Uri::from_parts(uri).map_err(|_| "bad request target")?;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Ok(req)
    }

    /// The declared body length, if any; Err if it is not a number.
    pub fn content_length(&self) -> Result<Option<u64>, &'static str> {
        if !self.headers.contains_key(CONTENT_LENGTH) {
            return Ok(None);
        }
        crate::message::headers::declared_length(&self.headers)
            .map(Some)
            .ok_or("bad content-length")
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}
