//! Retry families, per route: requests retried, and retries the retry
//! budget refused.

use super::family::{series, snapshot};
use super::text::{header, sample, Kind, Labels};
use super::{Metrics, RouteLabels};
use std::sync::atomic::Ordering::Relaxed;

impl Metrics {
    pub fn retry(&self, labels: &RouteLabels) {
        series(&self.retries, labels).fetch_add(1, Relaxed);
    }

    pub fn retry_budget_exhausted(&self, labels: &RouteLabels) {
        series(&self.budget_exhausted, labels).fetch_add(1, Relaxed);
    }

    pub(super) fn render_retries(&self, out: &mut String) {
        let families = [
            ("retry_total", "Requests retried.", &self.retries),
            (
                "retry_budget_exhausted_total",
                "Retries refused by the retry budget.",
                &self.budget_exhausted,
            ),
        ];
        for (name, help, family) in families {
            header(out, name, Kind::Counter, help);
            for (l, v) in snapshot(family) {
                let labels = Labels::new()
                    .with("direction", &l.direction)
                    .with("route", &l.route)
                    .with("dst_service", &l.dst_service);
                sample(out, name, &labels, v.load(Relaxed));
            }
        }
    }
}
