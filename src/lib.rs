//! meshcore's native core. This file declares the modules and registers the
//! `_core` Python module; the bindings live in `bindings/`, every idea in its
//! own module.
#![forbid(unsafe_code)]

pub mod balance;
mod bindings;
pub mod config;
pub mod conn;
pub mod filters;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod listen;
pub mod log;
pub mod message;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod resilience;
pub mod rng;
pub mod route;
pub mod runtime;
pub mod shared;
pub mod table;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tools;
pub mod transparent;
pub mod upstream;

use bindings::errors::{BindError, ConfigError, MeshcoreError, PluginError, TlsError};
use bindings::{identity, metrics as plugin_metrics, proxy_core, tools as bench};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<proxy_core::ProxyCore>()?;
    m.add_class::<bindings::handover::Inherited>()?;
    m.add_class::<bindings::tap::Tap>()?;
    m.add_function(wrap_pyfunction!(bindings::handover::inherit_sockets, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(identity::check_identity, m)?)?;
    m.add_function(wrap_pyfunction!(identity::check_server_certificate, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::policy::explain_policy, m)?)?;
    m.add_function(wrap_pyfunction!(plugin_metrics::render_plugin_metrics, m)?)?;
    m.add(
        "PLUGIN_DURATION_BUCKETS",
        PyTuple::new(py, metrics::plugins::HOOK_DURATION_BUCKETS)?,
    )?;
    m.add_function(wrap_pyfunction!(bench::_bench_loop, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_handshakes, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_start, m)?)?;
    m.add_class::<bench::LoadRun>()?;
    m.add("MeshcoreError", py.get_type::<MeshcoreError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("BindError", py.get_type::<BindError>())?;
    m.add("TlsError", py.get_type::<TlsError>())?;
    m.add("PluginError", py.get_type::<PluginError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
