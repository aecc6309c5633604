//! The plugin host's numbers as they cross from Python: plain data that
//! Rust renders, so that every family is written and escaped in one place.

use super::guarded;
use crate::metrics::{plugins, HookCounts, PluginReport};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// One hook as `HookStats.snapshot()` hands it over: (plugin, phase, errors,
/// calls per bucket, sum of seconds, calls).
pub type PyHookCounts = (String, String, u64, Vec<u64>, f64, u64);

/// `PluginHost.metrics_report()`: every hook's numbers, and the text plugins
/// with a `metrics()` method wrote themselves.
pub type PyPluginReport = (Vec<PyHookCounts>, Vec<String>);

pub fn plugin_report((hooks, own_text): PyPluginReport) -> PyResult<PluginReport> {
    let hooks = hooks
        .into_iter()
        .map(|(plugin, phase, errors, buckets, sum, count)| {
            HookCounts::new(plugin, phase, errors, buckets, sum, count)
        })
        .collect::<Result<_, _>>()
        .map_err(PyValueError::new_err)?;
    Ok(PluginReport { hooks, own_text })
}

/// The plugin families alone, for a plugin host with no proxy (the testing kit).
#[pyfunction]
pub fn render_plugin_metrics(report: PyPluginReport) -> PyResult<String> {
    guarded(|| {
        let mut out = String::new();
        plugins::render(&mut out, &plugin_report(report)?);
        Ok(out)
    })
}
