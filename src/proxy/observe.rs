//! Stage 5, observe: every answer passes here on its way back. A proxied
//! response's body streams through untouched while it is observed for the
//! balancer (first data frame), the breaker and metrics (status, gRPC status,
//! end of stream), under the route's whole-request deadline; an answer the
//! proxy made itself is counted and logged when it is sent. Access logs, tap
//! and tracing attach here.

use super::answer::{Failure, Report};
use super::ctx::{text, Said};
use crate::balance::{Endpoint, PendingRequest};
use crate::conn::ConnContext;
use crate::message::{error_response, BoxError, ProxyBody};
use crate::metrics::RequestLabels;
use crate::plugin::{PluginRequest, ON_LOG};
use crate::shared::Shared;
use crate::telemetry::Summary;
use crate::upstream::{Reusable, UpstreamBody};
use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
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
    /// Boxed: only telemetry and plugins with `on_log` use it, and inline
    /// it would more than double what every response carries and copies.
    log: Option<Box<Report>>,
}

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

    /// Tells the request's summary (telemetry, `on_log`) when the response ends.
    pub fn with_log(mut self, log: Option<Box<Report>>) -> Self {
        self.log = log;
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
        if let Some(mut log) = self.log.take() {
            let summary = &mut log.summary;
            summary.status = self.status;
            summary.grpc_status = self.grpc_status;
            summary.failed = failure;
            summary.response_bytes = self.bytes;
            tell(log, &self.shared, self.started, latency);
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
    if let Some(mut log) = failure.log {
        let summary = &mut log.summary;
        summary.status = status.as_u16();
        summary.grpc_status = grpc_status(resp.headers());
        summary.failed = status.is_server_error() || summary.grpc_status.is_some_and(|s| s != 0);
        summary.zone = Some(failure.labels.dst_zone.clone()).filter(|z| !z.is_empty());
        summary.response_bytes = Body::size_hint(resp.body()).exact().unwrap_or(0);
        tell(log, shared, started, started.elapsed());
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

/// A finished request's report, told: its times filled in, published to
/// telemetry, then handed to the plugins' `on_log`.
fn tell(mut report: Box<Report>, shared: &Shared, started: Instant, ttfb: Duration) {
    let elapsed = started.elapsed();
    let summary = &mut report.summary;
    summary.start = SystemTime::now()
        .checked_sub(elapsed)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    summary.duration_ms = elapsed.as_secs_f64() * 1000.0;
    summary.ttfb_ms = ttfb.as_secs_f64() * 1000.0;
    shared.telemetry.publish(&report.summary, report.span);
    if let Some((host, req)) = report.plugin.take() {
        host.on_log(req, report.summary);
    }
}

/// Whether this answer's summary is wanted, by telemetry or by a plugin
/// hook with `on_log` (given the request the hooks saw, if any).
fn wanted_report(
    conn: &ConnContext,
    plugins_run: bool,
    preq: Option<PluginRequest>,
) -> Option<Option<(Arc<crate::plugin::PluginHost>, Option<PluginRequest>)>> {
    let plugin = match plugins_run {
        true => conn.shared.plugins.load_full().map(|host| (host, preq)),
        false => None,
    }
    .filter(|(_, req)| req.as_ref().is_none_or(|r| r.has(ON_LOG)));
    (plugin.is_some() || conn.shared.telemetry.wants_summary()).then_some(plugin)
}

/// What a summary says of a request before it is answered. Every field is
/// named: `..Default::default()` would allocate a listener name to drop.
pub(super) fn summary_of(conn: &ConnContext, said: &Said<'_>) -> Summary {
    Summary {
        start: SystemTime::UNIX_EPOCH,
        listener: conn.listener_name.clone(),
        client: Some(conn.peer),
        version: said.version,
        method: said.method.clone(),
        path: clipped(said.path),
        authority: clipped(text(said.authority)),
        route: said.route.map(|r| r.name.clone()),
        service: said.service.cloned(),
        endpoint: None,
        zone: None,
        status: 0,
        grpc_status: None,
        failed: false,
        duration_ms: 0.0,
        ttfb_ms: 0.0,
        response_bytes: 0,
        retried: said.retried,
        identity: conn.tls.identity().map(str::to_string),
        trace_id: None,
    }
}

/// At most `SUMMARY_TEXT` bytes of a request's path or authority: a head may
/// be 96 KiB, and every queue of summaries (tap, access logs, spans) is
/// counted in items.
fn clipped(text: &str) -> String {
    if text.len() <= SUMMARY_TEXT {
        return text.to_owned();
    }
    let mut end = SUMMARY_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

const SUMMARY_TEXT: usize = 4096;

/// Gives an answer the proxy made itself what telemetry and the plugins'
/// `on_log` need, when any may want it: a plugin's when the route has
/// plugins, or before a route was found, when any is loaded (Python picks
/// them). With neither, this is two loads, on error paths only.
pub(super) fn logged(
    mut failure: Failure,
    conn: &ConnContext,
    preq: Option<PluginRequest>,
    said: Said<'_>,
) -> Failure {
    let plugins_run = said.route.is_none_or(|r| r.plugins);
    let plugin = match failure.log.take() {
        // Answered by a hook: its request is already here.
        Some(log) => Some(
            log.plugin
                .filter(|(_, req)| req.as_ref().is_none_or(|r| r.has(ON_LOG))),
        ),
        None => wanted_report(conn, plugins_run, preq),
    };
    let Some(plugin) = plugin else {
        return failure;
    };
    if plugin.is_none() && !conn.shared.telemetry.wants_summary() {
        return failure;
    }
    failure.log = Some(Box::new(Report {
        summary: summary_of(conn, &said),
        span: None,
        plugin,
    }));
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
