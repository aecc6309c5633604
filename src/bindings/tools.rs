//! Bindings for the measuring tools: a load-generator run that Python polls
//! (`meshcore bench`), and the micro-benchmark loops for `bench/`.

use super::errors::MeshcoreError;
use crate::config;
use crate::tools::{handshake, loadgen, microbench};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A load-generator run on its own thread; Python polls progress and waits.
#[pyclass(module = "meshcore._core")]
pub struct LoadRun {
    progress: Arc<loadgen::Progress>,
    started: Instant,
    thread: Mutex<Option<JoinHandle<Result<loadgen::Report, String>>>>,
}

#[pymethods]
impl LoadRun {
    /// (seconds elapsed, requests completed, errors)
    fn progress(&self) -> (f64, u64, u64) {
        (
            self.started.elapsed().as_secs_f64(),
            self.progress.completed.load(Relaxed),
            self.progress.errors.load(Relaxed),
        )
    }

    /// Ends the run before its duration: each connection stops once its
    /// request in flight is answered.
    fn stop(&self) {
        self.progress.stop.store(true, Relaxed);
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
#[pyo3(signature = (url, rate, duration, connections, http2, streams, timeout, host=None))]
#[allow(clippy::too_many_arguments)] // one per keyword of meshcore.bench.start
pub fn _bench_start(
    url: &str,
    rate: Option<f64>,
    duration: f64,
    connections: usize,
    http2: bool,
    streams: usize,
    timeout: f64,
    host: Option<String>,
) -> PyResult<LoadRun> {
    let url: ::http::Uri = url
        .parse()
        .map_err(|e| PyValueError::new_err(format!("invalid URL {url:?}: {e}")))?;
    let plan = loadgen::Plan {
        url,
        rate,
        duration: Duration::from_secs_f64(duration.max(0.0)),
        connections,
        http2,
        streams,
        timeout: Duration::from_secs_f64(timeout.max(0.001)),
        host,
    };
    let progress = Arc::new(loadgen::Progress::default());
    let shared = progress.clone();
    let thread = std::thread::Builder::new()
        .name("meshcore-bench".into())
        .spawn(move || loadgen::run(plan, shared))
        .map_err(|e| MeshcoreError::new_err(e.to_string()))?;
    Ok(LoadRun {
        progress,
        started: Instant::now(),
        thread: Mutex::new(Some(thread)),
    })
}

/// In-memory mesh TLS handshakes for `seconds`, the client offering only
/// `group` (or the mesh's "default" list): (handshakes, the group negotiated). Runs on the calling thread,
/// so the caller's thread CPU time measures it.
#[pyfunction]
pub fn _bench_handshakes(
    py: Python<'_>,
    group: &str,
    anchors_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    expected: &str,
    seconds: f64,
) -> PyResult<(u64, String)> {
    let offered = handshake::offer(group)
        .ok_or_else(|| PyValueError::new_err(format!("{group:?}: X25519MLKEM768, X25519 or default")))?;
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| handshake::run(offered, anchors_pem, chain_pem, key_pem, expected, duration))
        .map_err(MeshcoreError::new_err)
}

/// Micro-benchmark loops for `bench/` (one Python call, many operations).
#[pyfunction]
pub fn _bench_loop(py: Python<'_>, what: &str, size: usize, iterations: usize) -> PyResult<u64> {
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
    py.detach(run).map_err(PyValueError::new_err)
}
