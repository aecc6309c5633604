//! Stage 5, observe: every answer passes here on its way back. A proxied
//! response's body streams through untouched while it is observed for the
//! balancer (first data frame), the breaker and metrics (status, gRPC status,
//! end of stream), under the route's whole-request deadline; an answer the
//! proxy made itself is counted and logged when it is sent. Access logs, tap
//! and tracing attach here.

use super::answer::{Failure, FailureLog};
use super::ctx::{text, Said};
use crate::balance::{Endpoint, PendingRequest};
use crate::conn::ConnContext;
use crate::message::{error_response, BoxError, ProxyBody};
use crate::metrics::RequestLabels;
use crate::plugin::{LogSummary, PluginHost, PluginRequest, ON_LOG};
use crate::shared::Shared;
use crate::upstream::{Reusable, UpstreamBody};
use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// One proxied response, measured until its body ends or is dropped.
pub struct Observation {
    pending: PendingRequest,
    endpoint: Arc<Endpoint>,
    started: Instant,
    shared: Arc<Shared>,
    labels: RequestLabels,
    status: u16,
    grpc_status: Option<u32>,
    ttfb: Option<Duration>,
    failed: bool,
    bytes: u64,
    /// Boxed: only plugins with `on_log` use it, and inline it would
    /// more than double what every response carries and copies.
    log: Option<Box<LogHandoff>>,
}

type LogHandoff = (Arc<PluginHost>, PluginRequest, LogSummary);

impl Observation {
    pub fn new(
        pending: PendingRequest,
        endpoint: Arc<Endpoint>,
        started: Instant,
        shared: Arc<Shared>,
        labels: RequestLabels,
        status: u16,
        grpc_status: Option<u32>,
    ) -> Self {
        Observation {
            pending,
            endpoint,
            started,
            shared,
            labels,
            status,
            grpc_status,
            ttfb: None,
            failed: false,
            bytes: 0,
            log: None,
        }
    }

    /// Sends a summary to the plugins' `on_log` hooks when the response ends.
    pub fn with_log(mut self, log: Option<LogHandoff>) -> Self {
        self.log = log.map(Box::new);
        self
    }

    fn first_frame(&mut self) {
        if self.ttfb.is_none() {
            let now = Instant::now();
            self.ttfb = Some(now - self.started);
            self.pending.finish_at(now);
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let latency = self.ttfb.unwrap_or_else(|| self.started.elapsed());
        let failure = self.failed || self.status >= 500 || self.grpc_status.is_some_and(|s| s != 0);
        if failure {
            self.endpoint.record_failure();
        } else {
            self.endpoint.record_success();
        }
        let classification = if failure { "failure" } else { "success" };
        self.shared.metrics.response(
            &self.labels,
            self.status,
            self.grpc_status,
            classification,
            latency,
        );
        if let Some((host, req, mut summary)) = self.log.take().map(|log| *log) {
            summary.status = self.status;
            summary.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            summary.ttfb_ms = latency.as_secs_f64() * 1000.0;
            summary.response_bytes = self.bytes;
            host.on_log(Some(req), summary);
        }
    }
}

/// The proxy's own answer to a request that failed, counted and observed.
pub(super) fn answer_failure(failure: Failure, shared: &Shared, started: Instant) -> Response<ProxyBody> {
    let metrics = &shared.metrics;
    if !failure.counted {
        metrics.request(&failure.labels);
    }
    let resp = failure
        .response
        .unwrap_or_else(|| error_response(failure.status, &failure.reason));
    let status = resp.status();
    if let Some(log) = failure.log {
        let FailureLog {
            host,
            req,
            mut summary,
        } = *log;
        summary.status = status.as_u16();
        summary.zone = failure.labels.dst_zone.to_string();
        summary.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        summary.ttfb_ms = summary.duration_ms;
        summary.response_bytes = Body::size_hint(resp.body()).exact().unwrap_or(0);
        host.on_log(req, summary);
    }
    let classification = if status.is_server_error() {
        "failure"
    } else {
        "success"
    };
    metrics.response(
        &failure.labels,
        status.as_u16(),
        grpc_status(resp.headers()),
        classification,
        started.elapsed(),
    );
    resp
}

/// Gives an answer the proxy made itself what the plugins' `on_log` needs,
/// when a plugin may log it: one of its route's, or before a route was
/// found, one on every route (Python picks them). Without plugins this is
/// one pointer load, on error paths only.
pub(super) fn logged(
    mut failure: Failure,
    conn: &ConnContext,
    preq: Option<PluginRequest>,
    said: Said<'_>,
) -> Failure {
    if said.route.is_some_and(|r| !r.plugins) {
        return failure;
    }
    let mut log = match (failure.log.take(), preq) {
        (Some(log), _) => log,
        (None, preq) => match conn.shared.plugins.load_full() {
            Some(host) => Box::new(FailureLog {
                host,
                req: preq,
                summary: LogSummary::default(),
            }),
            None => return failure,
        },
    };
    if log.req.as_ref().is_some_and(|r| !r.has(ON_LOG)) {
        return failure;
    }
    log.summary = LogSummary {
        method: said.method.to_string(),
        path: said.path.to_string(),
        authority: text(said.authority).to_string(),
        route: said.route.map(|r| r.name.to_string()).unwrap_or_default(),
        service: said.service.unwrap_or_default().to_string(),
        retried: said.retried,
        identity: conn.tls.identity().map(str::to_string),
        ..Default::default()
    };
    failure.log = Some(log);
    failure
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request timeout while streaming the response")
    }
}

impl std::error::Error for DeadlineExceeded {}

pub struct ObservedBody {
    inner: UpstreamBody,
    observation: Option<Observation>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The HTTP/1.1 connection the body arrives on, pooled again at its end.
    reusable: Option<Reusable>,
}

impl ObservedBody {
    pub fn new(
        inner: UpstreamBody,
        observation: Observation,
        deadline: Option<tokio::time::Instant>,
        reusable: Option<Reusable>,
    ) -> Self {
        ObservedBody {
            inner,
            observation: Some(observation),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            reusable,
        }
    }

    fn release_connection(&mut self) {
        if let Some(reusable) = self.reusable.take() {
            reusable.release();
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // hyper stops polling a body once it reports its end (a Content-Length
        // body fully read, or an empty one), so that end is only seen here.
        if self.inner.is_end_stream() {
            self.release_connection();
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.first_frame();
                    if let Some(data) = frame.data_ref() {
                        obs.bytes += data.len() as u64;
                    }
                    if let Some(trailers) = frame.trailers_ref() {
                        obs.grpc_status = grpc_status(trailers).or(obs.grpc_status);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.failed = true;
                    obs.pending.abandon();
                }
                this.observation = None;
                this.reusable = None;
            }
            Poll::Ready(None) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.first_frame();
                }
                this.observation = None;
                this.release_connection();
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        if let Some(obs) = this.observation.as_mut() {
                            obs.failed = true;
                        }
                        this.observation = None;
                        this.reusable = None;
                        return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
