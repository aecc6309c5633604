//! Lifecycle families: config reloads by result and rollbacks by reason.
//! Python's lifecycle manager decides and counts; the registry renders.

use super::family::{series, snapshot};
use super::text::{header, sample, Kind, Labels};
use super::Metrics;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What can be counted, as (event, family name, label name, help).
const EVENTS: [(&str, &str, &str, &str); 2] = [
    (
        "reload",
        "config_reload_total",
        "result",
        "Config reloads asked for, by result (applied, refused, unchanged).",
    ),
    (
        "rollback",
        "config_rollback_total",
        "reason",
        "Config rollbacks, by reason (manual, or the verification that failed).",
    ),
];

impl Metrics {
    /// Counts one lifecycle event; an event outside `EVENTS` is an error.
    pub fn lifecycle(&self, event: &str, label: &str) -> Result<(), String> {
        if !EVENTS.iter().any(|(e, ..)| *e == event) {
            let known: Vec<_> = EVENTS.iter().map(|(e, ..)| *e).collect();
            return Err(format!("unknown lifecycle event {event:?} (known: {known:?})"));
        }
        series(&self.lifecycle, &(event.to_string(), label.to_string())).fetch_add(1, Relaxed);
        Ok(())
    }

    pub(super) fn render_lifecycle(&self, out: &mut String) {
        let counted = snapshot(&self.lifecycle);
        for (event, name, label, help) in EVENTS {
            header(out, name, Kind::Counter, help);
            let mut mine: Vec<(&str, u64)> = counted
                .iter()
                .filter(|((e, _), _)| e == event)
                .map(|((_, l), v)| (l.as_str(), v.load(Relaxed)))
                .collect();
            mine.sort();
            for (value, n) in mine {
                sample(out, name, &Labels::new().with(label, value), n);
            }
        }
    }
}

/// A count type for the family map: one counter per (event, label).
pub(super) type LifecycleCounts = super::family::Family<(String, String), AtomicU64>;

#[cfg(test)]
mod tests {
    use crate::metrics::{Metrics, Scrape};

    #[test]
    fn counts_render_under_their_family_with_escaped_labels() {
        let m = Metrics::default();
        m.lifecycle("reload", "applied").unwrap();
        m.lifecycle("reload", "applied").unwrap();
        m.lifecycle("rollback", "verify \"p99\"").unwrap();
        assert!(m.lifecycle("restart", "x").is_err());
        let text = m.render(&Scrape::default());
        assert!(
            text.contains("config_reload_total{result=\"applied\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("config_rollback_total{reason=\"verify \\\"p99\\\"\"} 1\n"),
            "{text}"
        );
    }
}
