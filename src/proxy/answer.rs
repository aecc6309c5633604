//! Answers the proxy makes itself: errors, redirects, direct responses, rate
//! limiting and plugin short-circuits. Every stage returns one of these to
//! stop the request; `observe` counts, logs and sends it.

use crate::message::ProxyBody;
use crate::metrics::RequestLabels;
use crate::plugin::{LogSummary, PluginHost, PluginRequest};
use http::{Response, StatusCode};
use std::sync::Arc;

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
