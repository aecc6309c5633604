//! Answers the proxy makes itself: errors, redirects, direct responses, rate
//! limiting and plugin short-circuits. Every stage returns one of these to
//! stop the request; `observe` counts, logs and sends it.

use crate::message::ProxyBody;
use crate::metrics::RequestLabels;
use crate::plugin::{PluginHost, PluginRequest};
use crate::telemetry::Summary;
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
    /// For access logs, tap and the plugins' `on_log`, when any may want it.
    pub log: Option<Box<Report>>,
}

/// What is told of a request once it is answered: its summary (status, times
/// and sizes are filled in at the end), for telemetry and for the plugins'
/// `on_log` when a hook has it.
pub(super) struct Report {
    pub summary: Summary,
    /// The proxy's span in the request's trace, begun at dispatch.
    pub span: Option<crate::telemetry::SpanStart>,
    /// The request as the hooks saw it: None when no hook saw it before it
    /// was answered.
    pub plugin: Option<(Arc<PluginHost>, Option<PluginRequest>)>,
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
