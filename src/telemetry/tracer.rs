//! The proxy's part in distributed traces: at dispatch it joins the
//! request's trace (W3C or B3), or starts one when sampling says so, and
//! hands its upstream the context with its own span as the parent; when the
//! response ends, a sampled span goes to the OTLP exporter, which encodes it
//! on its own thread (`span_encoder`).

use super::otlp::{Encoder, Exporter, Span, SpanKind, Value};
use super::record::Unpacker;
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
                Exporter::start(
                    collector,
                    &settings.service_name,
                    Default::default(),
                    span_encoder(),
                )
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

    /// (exported, dropped because the queue was full, failed to send).
    pub fn counts(&self) -> Option<(u64, u64, u64)> {
        let e = self.exporter.as_ref()?;
        Some((e.exported(), e.dropped(), e.failed()))
    }
}

/// What the exporter encodes records with: each is unpacked into one summary
/// it keeps, and its span encoded.
fn span_encoder() -> Encoder {
    let mut unpacker = Unpacker::default();
    Box::new(move |record, out| {
        if !unpacker.unpack(record) {
            return false;
        }
        let Some(span) = unpacker.span.filter(|s| s.export) else {
            return false;
        };
        encode_span(&span, &unpacker.summary, out);
        true
    })
}

/// The span of a finished request, as OpenTelemetry's HTTP conventions name
/// its attributes, appended to `out`.
fn encode_span(span: &SpanStart, summary: &Summary, out: &mut Vec<u8>) {
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
    Span {
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
    }
    .encode_into(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp::proto;
    use crate::telemetry::record;
    use crate::telemetry::trace::{SpanId, TraceId};
    use prost::Message;
    use std::time::SystemTime;

    fn attribute(span: &proto::Span, key: &str) -> Option<proto::any_value::Value> {
        let kv = span.attributes.iter().find(|kv| kv.key == key)?;
        kv.value.clone()?.value
    }

    #[test]
    fn a_packed_request_becomes_its_span_on_the_export_thread() {
        let start = SpanStart {
            trace_id: TraceId::from_bytes([1; 16]).unwrap(),
            span_id: SpanId::from_bytes([2; 8]).unwrap(),
            parent: SpanId::from_bytes([3; 8]),
            server: true,
            export: true,
        };
        let summary = Summary {
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            listener: "inbound".into(),
            path: "/a?b=1".into(),
            authority: "web.local".into(),
            route: Some("web".into()),
            endpoint: Some("10.0.0.7:8080".parse().unwrap()),
            status: 503,
            failed: true,
            duration_ms: 1.5,
            trace_id: Some(start.trace_id),
            ..Default::default()
        };
        let mut encode = span_encoder();
        let mut packed = Vec::new();
        record::pack(&summary, Some(&start), &mut packed);
        let mut out = Vec::new();
        assert!(encode(&packed, &mut out));
        let span = proto::Span::decode(&out[..]).unwrap();
        assert_eq!(
            (
                &*span.name,
                &span.trace_id[..],
                &span.span_id[..],
                &span.parent_span_id[..]
            ),
            ("GET web", &[1; 16][..], &[2; 8][..], &[3; 8][..])
        );
        assert_eq!(span.kind, proto::SpanKind::Server as i32);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1_500_000);
        use proto::any_value::Value as V;
        assert_eq!(attribute(&span, "url.path"), Some(V::Str("/a".into())));
        assert_eq!(attribute(&span, "http.response.status_code"), Some(V::Int(503)));
        assert_eq!(
            attribute(&span, "meshcore.endpoint"),
            Some(V::Str("10.0.0.7:8080".into()))
        );
        assert_eq!(attribute(&span, "meshcore.zone"), None);
        assert_eq!(span.status.unwrap().code, proto::StatusCode::Error as i32);

        // A request whose span is not exported, or that has none, makes none.
        for span in [
            Some(SpanStart {
                export: false,
                ..start
            }),
            None,
        ] {
            packed.clear();
            record::pack(&summary, span.as_ref(), &mut packed);
            let mut out = Vec::new();
            assert!(!encode(&packed, &mut out));
            assert!(out.is_empty());
        }
    }
}
