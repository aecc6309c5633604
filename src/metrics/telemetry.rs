//! Telemetry's own families: what access logs wrote and dropped, and what
//! taps dropped because their readers fell behind.

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
}
