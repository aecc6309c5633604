//! meshcore's native core. This file only binds Rust to Python; every idea
//! lives in its own module.
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod conn;
mod errors;
pub mod filters;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod listen;
pub mod loadgen;
pub mod log;
pub mod metrics;
pub mod microbench;
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
pub mod time;
pub mod tls;
pub mod upstream;

use errors::{BindError, ConfigError, MeshcoreError, PluginError, TlsError};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

/// Runs `f`, turning a Rust panic into a MeshcoreError instead of letting it
/// reach the interpreter.
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(MeshcoreError::new_err(format!(
            "internal error (Rust panic): {msg}"
        )))
    })
}

fn start_error(e: runtime::StartError) -> PyErr {
    match e {
        runtime::StartError::Config(m) => ConfigError::new_err(m),
        runtime::StartError::Bind(m) => BindError::new_err(m),
        runtime::StartError::Tls(m) => TlsError::new_err(m),
        runtime::StartError::Runtime(m) => MeshcoreError::new_err(m),
    }
}

/// One proxy instance. Python's `meshcore.Proxy` wraps it.
#[pyclass(module = "meshcore._core")]
struct ProxyCore {
    config: Mutex<Option<config::Config>>,
    running: Mutex<Option<runtime::Running>>,
}

impl ProxyCore {
    fn with_running<T>(&self, f: impl FnOnce(&runtime::Running) -> PyResult<T>) -> PyResult<T> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.as_ref() {
            Some(r) => f(r),
            None => Err(MeshcoreError::new_err("proxy is not running")),
        }
    }
}

#[pymethods]
impl ProxyCore {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        guarded(|| {
            let config = config::Config::from_json(config_json).map_err(ConfigError::new_err)?;
            Ok(ProxyCore {
                config: Mutex::new(Some(config)),
                running: Mutex::new(None),
            })
        })
    }

    /// Binds every listener and starts serving; returns once bound.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            let config = self
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| MeshcoreError::new_err("proxy was already started"))?;
            // Each worker thread attaches to the interpreter once and then detaches
            // for its whole life: its thread state stays, so plugin calls on that
            // thread only take the GIL instead of creating a thread state each time.
            let wrap: runtime::ThreadWrapper =
                std::sync::Arc::new(|body| Python::attach(|py| py.detach(body)));
            let running = py
                .detach(|| runtime::start(config, Some(wrap)))
                .map_err(start_error)?;
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
            Ok(())
        })
    }

    /// Drains in-flight requests for up to `grace` seconds, then stops.
    fn stop(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        guarded(|| {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(running) = running {
                let grace = Duration::from_secs_f64(grace.max(0.0));
                py.detach(|| running.stop(grace));
            }
            Ok(())
        })
    }

    fn reload(&self, config_json: &str) -> PyResult<()> {
        guarded(|| {
            let config = config::Config::from_json(config_json).map_err(ConfigError::new_err)?;
            self.with_running(|r| r.reload(config).map_err(ConfigError::new_err))
        })
    }

    fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Listener name -> "ip:port" actually bound.
    fn addresses(&self) -> PyResult<Vec<(String, String)>> {
        self.with_running(|r| {
            Ok(r.addresses
                .iter()
                .map(|(n, a)| (n.clone(), a.to_string()))
                .collect())
        })
    }

    /// Prometheus text exposition.
    fn metrics(&self) -> PyResult<String> {
        guarded(|| {
            self.with_running(|r| {
                let table = r.shared.table.load();
                let scrape = metrics::Scrape {
                    table: Some(&table),
                    identity: r.shared.identity.as_deref(),
                };
                Ok(r.shared.metrics.render(&scrape))
            })
        })
    }

    /// Per-endpoint balancer state as a JSON document.
    fn endpoints(&self) -> PyResult<String> {
        guarded(|| self.with_running(|r| Ok(r.shared.table.load().endpoints_json().to_string())))
    }

    /// Installs a new workload certificate chain and key (PEM) without a restart.
    fn update_identity(&self, cert_pem: &str, key_pem: &str) -> PyResult<()> {
        guarded(|| {
            self.with_running(|r| match &r.shared.identity {
                Some(identity) => identity.update(cert_pem, key_pem).map_err(TlsError::new_err),
                None => Err(TlsError::new_err("this proxy has no [identity] configured")),
            })
        })
    }

    /// Installs the Python plugin host whose hooks routes with `plugins` call.
    fn set_plugin_host(&self, host: Py<PyAny>) -> PyResult<()> {
        self.with_running(|r| {
            r.shared
                .plugins
                .store(Some(std::sync::Arc::new(plugin::PluginHost::new(host))));
            Ok(())
        })
    }

    /// (SPIFFE ID, expiry as unix seconds) of the certificate in use, if any.
    fn identity_info(&self) -> PyResult<Option<(Option<String>, i64)>> {
        self.with_running(|r| {
            Ok(r.shared
                .identity
                .as_ref()
                .and_then(|i| i.current())
                .map(|c| (c.spiffe_id.clone(), c.not_after)))
        })
    }

    fn open_connections(&self) -> PyResult<usize> {
        self.with_running(|r| Ok(r.shared.connections.open()))
    }

    fn connection_peak(&self) -> PyResult<(usize, usize)> {
        self.with_running(|r| Ok(r.shared.connections.take_peak()))
    }
}

/// A load-generator run on its own thread; Python polls progress and waits.
#[pyclass(module = "meshcore._core")]
struct LoadRun {
    progress: std::sync::Arc<loadgen::Progress>,
    started: std::time::Instant,
    thread: Mutex<Option<std::thread::JoinHandle<Result<loadgen::Report, String>>>>,
}

#[pymethods]
impl LoadRun {
    /// (seconds elapsed, requests completed, errors)
    fn progress(&self) -> (f64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.started.elapsed().as_secs_f64(),
            self.progress.completed.load(Relaxed),
            self.progress.errors.load(Relaxed),
        )
    }

    /// Blocks (without the GIL) until the run ends; returns the report as JSON.
    fn wait(&self, py: Python<'_>) -> PyResult<String> {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = thread.ok_or_else(|| MeshcoreError::new_err("this run was already collected"))?;
        let report = py
            .detach(|| thread.join())
            .map_err(|_| MeshcoreError::new_err("load generator panicked"))?
            .map_err(MeshcoreError::new_err)?;
        serde_json::to_string(&report).map_err(|e| MeshcoreError::new_err(e.to_string()))
    }
}

#[pyfunction]
#[pyo3(signature = (url, rate, duration, connections, http2, streams, timeout))]
fn _bench_start(
    url: &str,
    rate: Option<f64>,
    duration: f64,
    connections: usize,
    http2: bool,
    streams: usize,
    timeout: f64,
) -> PyResult<LoadRun> {
    let url: ::http::Uri = url
        .parse()
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("invalid URL {url:?}: {e}")))?;
    let plan = loadgen::Plan {
        url,
        rate,
        duration: std::time::Duration::from_secs_f64(duration.max(0.0)),
        connections,
        http2,
        streams,
        timeout: std::time::Duration::from_secs_f64(timeout.max(0.001)),
    };
    let progress = std::sync::Arc::new(loadgen::Progress::default());
    let shared = progress.clone();
    let thread = std::thread::Builder::new()
        .name("meshcore-bench".into())
        .spawn(move || loadgen::run(plan, shared))
        .map_err(|e| MeshcoreError::new_err(e.to_string()))?;
    Ok(LoadRun {
        progress,
        started: std::time::Instant::now(),
        thread: Mutex::new(Some(thread)),
    })
}

/// Proves the panic boundary: panics inside Rust and must surface as MeshcoreError.
/// Loads identity PEMs as the data plane will at start, without starting:
/// (field, reason) for what it refuses, else None. `meshcore check` uses it
/// so that it refuses exactly what `run` would, without loading OpenSSL.
#[pyfunction]
#[pyo3(signature = (trust_anchors_pem, cert_pem=None, key_pem=None))]
fn check_identity(
    trust_anchors_pem: &str,
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
) -> PyResult<Option<(&'static str, String)>> {
    guarded(|| {
        let identity = match tls::identity::Identity::new(trust_anchors_pem, Vec::new()) {
            Ok(identity) => identity,
            Err(e) => return Ok(Some(("trust_anchors", e))),
        };
        if let (Some(cert), Some(key)) = (cert_pem, key_pem) {
            if let Err(e) = identity.update(cert, key) {
                let field = if e.contains("key") { "key" } else { "cert" };
                return Ok(Some((field, e)));
            }
        }
        Ok(None)
    })
}

#[pyfunction]
fn _panic_for_test() -> PyResult<()> {
    guarded(|| panic!("deliberate test panic"))
}

/// Micro-benchmark loops for `bench/` (one Python call, many operations).
#[pyfunction]
fn _bench_loop(py: Python<'_>, what: &str, size: usize, iterations: usize) -> PyResult<u64> {
    let run = || match what {
        "pick-peak-ewma" => Ok(microbench::balancer_pick(
            config::BalancerKind::PeakEwma,
            size,
            iterations,
        )),
        "pick-round-robin" => Ok(microbench::balancer_pick(
            config::BalancerKind::RoundRobin,
            size,
            iterations,
        )),
        "route-match" => Ok(microbench::route_match(size, iterations)),
        "header-rewrite" => Ok(microbench::header_rewrite(iterations)),
        "metrics-record" => Ok(microbench::metrics_record(iterations)),
        other => Err(format!("unknown benchmark {other:?}")),
    };
    py.detach(run).map_err(pyo3::exceptions::PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<ProxyCore>()?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(check_identity, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_loop, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_start, m)?)?;
    m.add_class::<LoadRun>()?;
    m.add("MeshcoreError", py.get_type::<MeshcoreError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("BindError", py.get_type::<BindError>())?;
    m.add("TlsError", py.get_type::<TlsError>())?;
    m.add("PluginError", py.get_type::<PluginError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
