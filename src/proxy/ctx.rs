//! What every stage knows of the request in flight: its connection, the
//! routing table it started with, when it arrived, its authority and its
//! metric labels.

use crate::conn::ConnContext;
use crate::metrics::RequestLabels;
use crate::proto::RequestBody;
use crate::route::Route;
use crate::table::Table;
use arc_swap::Guard;
use http::header::HOST;
use http::{HeaderValue, Request};
use std::sync::Arc;
use std::time::Instant;

pub(super) struct RequestCtx {
    pub conn: Arc<ConnContext>,
    /// The table the request started with: a reload does not change it mid-way.
    pub table: Guard<Arc<Table>>,
    pub started: Instant,
    /// The request's authority (empty until `authorize` has checked the target).
    pub authority: HeaderValue,
    pub labels: RequestLabels,
}

impl RequestCtx {
    pub fn new(conn: Arc<ConnContext>, started: Instant) -> Self {
        let labels = RequestLabels {
            direction: conn.direction.clone(),
            authority: HeaderValue::from_static(""),
            dst_service: conn.no_name.clone(),
            dst_zone: conn.no_name.clone(),
            cross_zone: false,
            tls: conn.tls.label(),
            route: conn.no_name.clone(),
        };
        RequestCtx {
            table: conn.shared.table.load(),
            conn,
            started,
            authority: HeaderValue::from_static(""),
            labels,
        }
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form), copied into
/// the per-thread buffer, else the Host header, shared. Empty when missing or
/// not text.
pub(super) fn authority_of(req: &Request<RequestBody>) -> HeaderValue {
    let found = match req.uri().authority() {
        // A shared copy: the value is cloned into labels, and a plain one
        // would be allocated twice (for the copy, then to share it).
        Some(a) => {
            HeaderValue::from_maybe_shared(crate::io::read_buf::shared_copy(a.as_str().as_bytes())).ok()
        }
        None => req.headers().get(HOST).cloned(),
    };
    found
        .filter(|v| v.to_str().is_ok())
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// A header value known to be text (see `authority_of`).
pub(super) fn text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or_default()
}

/// What a log summary says of a request the proxy answered itself.
pub(super) struct Said<'a> {
    pub version: http::Version,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub authority: &'a HeaderValue,
    pub route: Option<&'a Route>,
    pub service: Option<&'a Arc<str>>,
    pub retried: bool,
}

impl<'a> Said<'a> {
    pub fn of(req: &'a Request<RequestBody>, authority: &'a HeaderValue, route: Option<&'a Route>) -> Self {
        Said {
            version: req.version(),
            method: req.method(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            authority,
            route,
            service: None,
            retried: false,
        }
    }
}
