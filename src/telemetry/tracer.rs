//! The proxy's part in distributed traces: at dispatch it joins the
//! request's trace (W3C or B3), or starts one when sampling says so, and
//! hands its upstream the context with its own span as the parent; when the
//! response ends, a sampled span goes to the OTLP exporter.

use super::otlp::{Exporter, Span, SpanKind, Value};
use super::retire::OffThread;
use super::text;
use super::trace::{self, Format, SpanId, TraceId};
use super::Summary;
use crate::config::TracingConfig;
use std::sync::Arc;
use std::time::Duration;

pub struct Tracer {
    pub(super) settings: TracingConfig,
    /// Shared with the next config's tracer when the collector stays.
    pub(super) exporter: Option<Arc<OffThread<Exporter>>>,
}

/// A request's span, begun at dispatch and ended with its response.
#[derive(Debug, Clone, Copy)]
pub struct SpanStart {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// Inbound: the proxy serves the call (SERVER); outbound, it makes it.
    pub server: bool,
    /// Sampled, with a collector to send it to.
    pub export: bool,
}

impl Tracer {
    /// Starts the exporter when there is a collector.
    pub fn new(
        settings: &TracingConfig,
        exporter: Option<Arc<OffThread<Exporter>>>,
    ) -> Result<Tracer, String> {
        let exporter = match (&settings.otlp, exporter) {
            (None, _) => None,
            (Some(_), Some(kept)) => Some(kept),
            (Some(collector), None) => Some(Arc::new(OffThread::new(
                Exporter::start(collector, &settings.service_name, Default::default())
                    .map_err(|e| format!("tracing.otlp: {e}"))?,
            ))),
        };
        Ok(Tracer {
            settings: settings.clone(),
            exporter,
        })
    }

    /// Whether the next config's tracer can keep this one's exporter.
    pub(super) fn same_collector(&self, settings: &TracingConfig) -> bool {
        self.settings.otlp == settings.otlp && self.settings.service_name == settings.service_name
    }

    /// The request's trace, rewritten in `headers` for its upstream with the
    /// proxy's span as the parent. None when it has none and starts none.
    pub fn begin(&self, headers: &mut http::HeaderMap, server: bool) -> Option<SpanStart> {
        let sample = || trace::sample(self.settings.sampling);
        let (trace_id, parent, sampled, format) = match trace::incoming(headers) {
            Some(i) => (
                i.trace_id,
                Some(i.parent),
                i.sampled.unwrap_or_else(sample),
                i.format,
            ),
            None => {
                if !trace::sampling_hint(headers).unwrap_or_else(sample) {
                    return None;
                }
                (TraceId::random(), None, true, Format::W3c)
            }
        };
        let span_id = SpanId::random();
        trace::propagate(headers, trace_id, span_id, parent, sampled, format);
        Some(SpanStart {
            trace_id,
            span_id,
            parent,
            server,
            export: sampled && self.exporter.is_some(),
        })
    }

    /// Sends the span of a finished request.
    pub fn export(&self, span: SpanStart, summary: &Summary) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let method = summary.method.as_str();
        let name: &[&str] = match &summary.route {
            None => &[method],
            Some(route) => &[method, " ", route],
        };
        let mut text = [0u8; 64];
        let endpoint = summary
            .endpoint
            .map_or("", |addr| text::addr_text(addr, &mut text));
        fn named<'a>(key: &'static str, value: &'a str) -> Option<(&'static str, Value<'a>)> {
            (!value.is_empty()).then_some((key, Value::Str(value)))
        }
        let wanted = [
            Some(("http.request.method", Value::Str(method))),
            Some((
                "url.path",
                Value::Str(summary.path.split('?').next().unwrap_or("")),
            )),
            Some(("http.response.status_code", Value::Int(summary.status.into()))),
            Some(("meshcore.listener", Value::Str(&summary.listener))),
            named("server.address", &summary.authority),
            named("meshcore.route", summary.route_name()),
            named("meshcore.service", summary.service_name()),
            named("meshcore.endpoint", endpoint),
            named("meshcore.zone", summary.zone.as_deref().unwrap_or("")),
            summary
                .identity
                .as_deref()
                .map(|id| ("meshcore.client_identity", Value::Str(id))),
            summary
                .grpc_status
                .map(|code| ("rpc.grpc.status_code", Value::Int(code.into()))),
            summary.retried.then_some(("meshcore.retried", Value::Bool(true))),
        ];
        // On the stack: the span is encoded before this returns.
        let mut attributes = [("", Value::Int(0)); 12];
        let mut count = 0;
        for attribute in wanted.into_iter().flatten() {
            attributes[count] = attribute;
            count += 1;
        }
        let duration = Duration::from_secs_f64(summary.duration_ms.max(0.0) / 1000.0);
        exporter.send(&Span {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent: span.parent,
            name,
            kind: if span.server {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start: summary.start,
            end: summary.start + duration,
            attributes: &attributes[..count],
            error: summary.failed,
        });
    }

    /// (exported, dropped because the queue was full, failed to send).
    pub fn counts(&self) -> Option<(u64, u64, u64)> {
        let e = self.exporter.as_ref()?;
        Some((e.exported(), e.dropped(), e.failed()))
    }
}
