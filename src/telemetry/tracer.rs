//! The proxy's part in distributed traces: at dispatch it joins the
//! request's trace (W3C or B3), or starts one when sampling says so, and
//! hands its upstream the context with its own span as the parent; when the
//! response ends, a sampled span goes to the OTLP exporter.

use super::otlp::{Exporter, Span, SpanKind, Value};
use super::retire::OffThread;
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
        let name = match summary.route.is_empty() {
            true => summary.method.clone(),
            false => format!("{} {}", summary.method, summary.route),
        };
        let text = |s: &str| Value::Str(s.to_owned());
        let mut attributes = vec![
            ("http.request.method", text(&summary.method)),
            ("url.path", text(summary.path.split('?').next().unwrap_or(""))),
            ("http.response.status_code", Value::Int(summary.status.into())),
            ("meshcore.listener", text(&summary.listener)),
        ];
        let named = [
            ("server.address", &summary.authority),
            ("meshcore.route", &summary.route),
            ("meshcore.service", &summary.service),
            ("meshcore.endpoint", &summary.endpoint),
            ("meshcore.zone", &summary.zone),
        ];
        attributes.extend(
            named
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k, text(v))),
        );
        if let Some(identity) = &summary.identity {
            attributes.push(("meshcore.client_identity", text(identity)));
        }
        if let Some(code) = summary.grpc_status {
            attributes.push(("rpc.grpc.status_code", Value::Int(code.into())));
        }
        if summary.retried {
            attributes.push(("meshcore.retried", Value::Bool(true)));
        }
        let duration = Duration::from_secs_f64(summary.duration_ms.max(0.0) / 1000.0);
        exporter.send(Span {
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
            attributes,
            error: summary.failed,
        });
    }

    /// (exported, dropped because the queue was full, failed to send).
    pub fn counts(&self) -> Option<(u64, u64, u64)> {
        let e = self.exporter.as_ref()?;
        Some((e.exported(), e.dropped(), e.failed()))
    }
}
