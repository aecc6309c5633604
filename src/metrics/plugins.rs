//! Plugin families: `plugin_errors_total` and the `plugin_duration_seconds`
//! histogram, by plugin and phase. Python counts (it runs the hooks) and
//! hands the numbers over at scrape time; they are written here.

use super::text::{header, histogram, sample, Kind, Labels, PyFloat};

/// Upper bounds in seconds: the Prometheus client's defaults, shifted down
/// for hooks that run in-process. Python's `HookStats` counts by these.
pub const HOOK_DURATION_BUCKETS: [f64; 13] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// One plugin hook's numbers, as counted by Python.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookCounts {
    pub plugin: String,
    pub phase: String,
    /// Times the hook raised or timed out.
    pub errors: u64,
    /// Calls per bucket of `HOOK_DURATION_BUCKETS` (not cumulative).
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl HookCounts {
    /// Refuses bucket counts that do not line up with the bounds.
    pub fn new(
        plugin: String,
        phase: String,
        errors: u64,
        buckets: Vec<u64>,
        sum_seconds: f64,
        count: u64,
    ) -> Result<Self, String> {
        if buckets.len() != HOOK_DURATION_BUCKETS.len() {
            return Err(format!(
                "plugin {plugin:?}, phase {phase:?}: {} bucket counts for {} buckets",
                buckets.len(),
                HOOK_DURATION_BUCKETS.len()
            ));
        }
        Ok(HookCounts {
            plugin,
            phase,
            errors,
            buckets,
            sum_seconds,
            count,
        })
    }

    fn labels(&self) -> Labels {
        Labels::new()
            .with("plugin", &self.plugin)
            .with("phase", &self.phase)
    }
}

/// What the plugin host reports at a scrape.
#[derive(Clone, Debug, Default)]
pub struct PluginReport {
    pub hooks: Vec<HookCounts>,
    /// Text that plugins with a `metrics()` method wrote themselves; it is
    /// theirs, appended as it is.
    pub own_text: Vec<String>,
}

pub fn render(out: &mut String, report: &PluginReport) {
    let mut hooks: Vec<&HookCounts> = report.hooks.iter().collect();
    hooks.sort_by(|a, b| (&a.plugin, &a.phase).cmp(&(&b.plugin, &b.phase)));
    header(
        out,
        "plugin_errors_total",
        Kind::Counter,
        "Plugin hooks that raised or timed out.",
    );
    for h in hooks.iter().filter(|h| h.errors > 0) {
        sample(out, "plugin_errors_total", &h.labels(), h.errors);
    }
    header(
        out,
        "plugin_duration_seconds",
        Kind::Histogram,
        "Time spent in plugin hooks.",
    );
    for h in hooks.iter().filter(|h| h.count > 0) {
        let buckets = HOOK_DURATION_BUCKETS
            .iter()
            .map(|&b| PyFloat(b))
            .zip(h.buckets.iter().copied());
        histogram(
            out,
            "plugin_duration_seconds",
            &h.labels(),
            buckets,
            PyFloat(h.sum_seconds),
            h.count,
        );
    }
    for text in &report.own_text {
        out.push_str(text.trim_end_matches('\n'));
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(plugin: &str, phase: &str, errors: u64, count: u64) -> HookCounts {
        let mut buckets = vec![0; HOOK_DURATION_BUCKETS.len()];
        buckets[0] = count.min(1);
        buckets[5] = count.saturating_sub(1);
        HookCounts::new(plugin.into(), phase.into(), errors, buckets, 0.00125, count).unwrap()
    }

    #[test]
    fn hooks_render_sorted_with_errors_only_where_counted() {
        let report = PluginReport {
            hooks: vec![
                hook("b", "on_request", 0, 2),
                hook("a\"\n", "on_response", 3, 0),
                hook("a\"\n", "on_log", 0, 1),
            ],
            own_text: vec!["# TYPE mine counter\nmine 1\n\n".into(), "other 2".into()],
        };
        let mut out = String::new();
        render(&mut out, &report);
        let expected = "\
# HELP plugin_errors_total Plugin hooks that raised or timed out.
# TYPE plugin_errors_total counter
plugin_errors_total{plugin=\"a\\\"\\n\",phase=\"on_response\"} 3
# HELP plugin_duration_seconds Time spent in plugin hooks.
# TYPE plugin_duration_seconds histogram
";
        assert!(out.starts_with(expected), "{out}");
        let a = out.find("plugin=\"a\\\"\\n\",phase=\"on_log\",le=\"1e-05\"} 1\n");
        let b = out.find("plugin=\"b\",phase=\"on_request\",le=\"1e-05\"} 1\n");
        assert!(a.is_some() && b.is_some() && a < b, "{out}");
        assert!(out.contains("{plugin=\"b\",phase=\"on_request\",le=\"0.0005\"} 2\n"));
        assert!(out.contains("{plugin=\"b\",phase=\"on_request\",le=\"1.0\"} 2\n"));
        assert!(out.contains("plugin_duration_seconds_sum{plugin=\"b\",phase=\"on_request\"} 0.00125\n"));
        assert!(
            !out.contains("phase=\"on_response\",le="),
            "no histogram without calls"
        );
        assert!(out.ends_with("\nmine 1\nother 2\n"), "{out}");
    }

    #[test]
    fn bucket_counts_must_match_the_bounds() {
        let e = HookCounts::new("p".into(), "on_log".into(), 0, vec![1, 2], 0.1, 3).unwrap_err();
        assert!(e.contains("2 bucket counts for 13 buckets"), "{e}");
    }
}
