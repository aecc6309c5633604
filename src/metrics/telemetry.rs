//! Telemetry's own families: what access logs wrote and dropped, what taps
//! dropped because their readers fell behind, and the spans exported.

use super::text::{header, sample, Kind, Labels};
use crate::telemetry::Telemetry;

pub(super) fn render(out: &mut String, telemetry: &Telemetry) {
    let logs = telemetry.access_log_counts();
    header(
        out,
        "access_log_lines_total",
        Kind::Counter,
        "Access log lines written, by log.",
    );
    for log in &logs {
        sample(
            out,
            "access_log_lines_total",
            &Labels::new().with("path", &log.path),
            log.written,
        );
    }
    header(
        out,
        "access_log_dropped_total",
        Kind::Counter,
        "Access log lines dropped: the writer fell behind (behind) or could not write (write).",
    );
    for log in &logs {
        for (reason, n) in [("behind", log.dropped_behind), ("write", log.dropped_write)] {
            let labels = Labels::new().with("path", &log.path).with("reason", reason);
            sample(out, "access_log_dropped_total", &labels, n);
        }
    }
    header(
        out,
        "tap_dropped_total",
        Kind::Counter,
        "Request summaries dropped because a tap's reader fell behind.",
    );
    sample(out, "tap_dropped_total", &Labels::new(), telemetry.taps.dropped());
    if let Some((exported, dropped, failed)) = telemetry.tracer().and_then(|t| t.counts()) {
        let none = Labels::new();
        header(
            out,
            "trace_spans_exported_total",
            Kind::Counter,
            "Spans the OTLP collector took.",
        );
        sample(out, "trace_spans_exported_total", &none, exported);
        header(
            out,
            "trace_spans_dropped_total",
            Kind::Counter,
            "Spans lost: the export queue was full (queue) or the collector could not take them (export).",
        );
        for (reason, n) in [("queue", dropped), ("export", failed)] {
            sample(
                out,
                "trace_spans_dropped_total",
                &Labels::new().with("reason", reason),
                n,
            );
        }
    }
}
