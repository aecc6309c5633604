//! Answers the proxy makes itself: errors, redirects, direct responses, rate
//! limiting and plugin short-circuits; and header conversion for plugins.

use super::{error_response, ProxyBody};
use crate::metrics::RequestLabels;
use crate::plugin::{HeaderList, LogSummary, PluginHost, PluginRequest};
use crate::route;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

/// A request the proxy answers itself: an error, or a local response
/// (redirect, direct response, rate limit, plugin short-circuit).
pub(super) struct Failure {
    pub status: StatusCode,
    pub reason: String,
    pub labels: RequestLabels,
    pub response: Option<Response<ProxyBody>>,
    /// Whether `request_total` already has this request.
    pub counted: bool,
    /// For the plugins' `on_log`, when some plugin may want it.
    pub log: Option<Box<FailureLog>>,
}

/// What `on_log` gets of an answer the proxy made; status and times are
/// filled in when it is sent.
pub(super) struct FailureLog {
    pub host: Arc<PluginHost>,
    /// None when no hook saw the request before it was answered.
    pub req: Option<PluginRequest>,
    pub summary: LogSummary,
}

impl Failure {
    pub fn counted(self) -> Self {
        Failure {
            counted: true,
            ..self
        }
    }
}

pub(super) fn fail(status: StatusCode, reason: impl Into<String>, labels: &RequestLabels) -> Failure {
    Failure {
        status,
        reason: reason.into(),
        labels: labels.clone(),
        response: None,
        counted: false,
        log: None,
    }
}

pub(super) fn local(response: Response<ProxyBody>, labels: &RequestLabels) -> Failure {
    Failure {
        status: response.status(),
        reason: String::new(),
        labels: labels.clone(),
        response: Some(response),
        counted: false,
        log: None,
    }
}

pub(super) fn plugin_failed(reason: &str, labels: &RequestLabels) -> Failure {
    eprintln!("meshcore: plugins: {reason}");
    fail(StatusCode::INTERNAL_SERVER_ERROR, "plugin error", labels)
}

pub(super) fn header_list(headers: &HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(super) fn header_map(list: HeaderList) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(list.len());
    for (k, v) in list {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("plugin set invalid header {k:?}"))?;
        let value =
            HeaderValue::from_str(&v).map_err(|_| format!("plugin set an invalid value for {k:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response a plugin made; a bad header or status becomes a 500.
pub(super) fn plugin_response(status: u16, headers: HeaderList, body: Vec<u8>) -> Response<ProxyBody> {
    let (Ok(status), Ok(headers)) = (StatusCode::from_u16(status), header_map(headers)) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin error");
    };
    let mut resp = Response::new(super::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Rate limit, redirect and direct response: answered without an upstream.
pub(super) fn route_answers_itself(
    route: &route::Route,
    req: &Request<super::RequestBody>,
    authority: &str,
) -> Option<Response<ProxyBody>> {
    let filters = &route.filters;
    if let Some(limit) = &filters.rate_limit {
        if let Err(wait) = limit.try_acquire(Instant::now()) {
            let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            return Some(resp);
        }
    }
    if let Some(redirect) = &filters.redirect {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut resp = Response::new(super::full(bytes::Bytes::new()));
        *resp.status_mut() = redirect.status;
        if let Ok(location) = HeaderValue::from_str(&redirect.location(authority, path)) {
            resp.headers_mut().insert(http::header::LOCATION, location);
        }
        return Some(resp);
    }
    if let Some(direct) = &filters.direct {
        let mut resp = Response::new(super::full(direct.body.clone()));
        *resp.status_mut() = direct.status;
        for (k, v) in &direct.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        return Some(resp);
    }
    None
}
