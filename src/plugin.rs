//! The one place Rust calls Python: plugin hooks, for routes that have them.
//!
//! The Python `PluginHost` runs the hooks and answers with what changed. An
//! answer may be a `concurrent.futures.Future` (async hooks run on the
//! plugin event loop); then this task waits for its done-callback without
//! holding the GIL or blocking a worker.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::sync::Mutex;
use tokio::sync::oneshot;

pub type HeaderList = Vec<(String, String)>;

/// What a phase's hooks changed.
#[derive(Debug)]
pub enum Change {
    Nothing,
    /// Answer the client with this instead.
    Respond {
        status: u16,
        headers: HeaderList,
        body: Vec<u8>,
    },
    Request {
        path: String,
        headers: Option<HeaderList>,
        service: Option<String>,
    },
    Response {
        status: u16,
        headers: HeaderList,
    },
}

pub struct PluginHost {
    host: Py<PyAny>,
}

/// Wakes the waiting task when a Python future completes.
#[pyclass]
struct Wake {
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

#[pymethods]
impl Wake {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

fn error_text(py: Python<'_>, e: PyErr) -> String {
    format!("{}", e.value(py))
}

fn decode(answer: &Bound<'_, PyAny>) -> PyResult<Change> {
    if answer.is_none() {
        return Ok(Change::Nothing);
    }
    let tuple = answer.cast::<PyTuple>()?;
    let kind: String = tuple.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "respond" => Change::Respond {
            status: tuple.get_item(1)?.extract()?,
            headers: tuple.get_item(2)?.extract()?,
            body: tuple.get_item(3)?.extract()?,
        },
        "request" => Change::Request {
            path: tuple.get_item(1)?.extract()?,
            headers: tuple.get_item(2)?.extract()?,
            service: tuple.get_item(3)?.extract()?,
        },
        "response" => Change::Response {
            status: tuple.get_item(1)?.extract()?,
            headers: tuple.get_item(2)?.extract()?,
        },
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown plugin answer {other:?}"
            )))
        }
    })
}

/// Waits for an answer that may be a concurrent future.
async fn settle(answer: Py<PyAny>) -> Result<Change, String> {
    let pending = Python::attach(|py| -> Result<Option<oneshot::Receiver<()>>, String> {
        let bound = answer.bind(py);
        if !bound
            .hasattr("add_done_callback")
            .map_err(|e| error_text(py, e))?
        {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let wake = Py::new(
            py,
            Wake {
                tx: Mutex::new(Some(tx)),
            },
        )
        .map_err(|e| error_text(py, e))?;
        bound
            .call_method1("add_done_callback", (wake,))
            .map_err(|e| error_text(py, e))?;
        Ok(Some(rx))
    })?;
    if let Some(rx) = pending {
        rx.await.map_err(|_| "plugin future dropped".to_string())?;
        return Python::attach(|py| {
            let result = answer
                .bind(py)
                .call_method0("result")
                .map_err(|e| error_text(py, e))?;
            decode(&result).map_err(|e| error_text(py, e))
        });
    }
    Python::attach(|py| decode(answer.bind(py)).map_err(|e| error_text(py, e)))
}

/// The request as the hooks see it, kept for the later phases (and its `ctx`),
/// with the phases that have hooks on its route (bit i: PHASES[i] in Python).
pub struct PluginRequest(Py<PyAny>, u8);

pub const ON_UPSTREAM_REQUEST: u8 = 1 << 1;
pub const ON_RESPONSE: u8 = 1 << 2;
pub const ON_LOG: u8 = 1 << 3;

impl PluginRequest {
    pub fn has(&self, phase: u8) -> bool {
        self.1 & phase != 0
    }
}

pub struct RequestFacts<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: HeaderList,
    pub peer: String,
    pub identity: Option<&'a str>,
    pub service: Option<&'a str>,
}

impl PluginHost {
    pub fn new(host: Py<PyAny>) -> Self {
        PluginHost { host }
    }

    pub async fn on_request(&self, f: RequestFacts<'_>) -> Result<(PluginRequest, Change), String> {
        let (req, answer, phases) = Python::attach(|py| -> PyResult<(Py<PyAny>, Py<PyAny>, u8)> {
            let args = (
                f.route,
                f.method,
                f.path,
                f.authority,
                f.headers,
                f.peer,
                f.identity,
                f.service,
            );
            let out = self.host.bind(py).call_method1("on_request", args)?;
            let tuple = out.cast::<PyTuple>()?;
            Ok((
                tuple.get_item(0)?.unbind(),
                tuple.get_item(1)?.unbind(),
                tuple.get_item(2)?.extract()?,
            ))
        })
        .map_err(|e| Python::attach(|py| error_text(py, e)))?;
        Ok((PluginRequest(req, phases), settle(answer).await?))
    }

    pub async fn on_upstream_request(
        &self,
        req: &PluginRequest,
        addr: String,
        zone: &str,
    ) -> Result<Change, String> {
        let answer = Python::attach(|py| {
            self.host
                .bind(py)
                .call_method1("on_upstream_request", (req.0.clone_ref(py), addr, zone))
                .map(Bound::unbind)
                .map_err(|e| error_text(py, e))
        })?;
        settle(answer).await
    }

    pub async fn on_response(
        &self,
        req: &PluginRequest,
        status: u16,
        headers: HeaderList,
    ) -> Result<Change, String> {
        let answer = Python::attach(|py| {
            self.host
                .bind(py)
                .call_method1("on_response", (req.0.clone_ref(py), status, headers))
                .map(Bound::unbind)
                .map_err(|e| error_text(py, e))
        })?;
        settle(answer).await
    }

    /// Hands the summary to Python on a blocking thread: never on the response path.
    /// `req` is None for a request the proxy answered before any hook saw it.
    pub fn on_log(
        self: &std::sync::Arc<Self>,
        req: Option<PluginRequest>,
        summary: crate::telemetry::Summary,
    ) {
        let host = self.clone();
        tokio::task::spawn_blocking(move || {
            Python::attach(|py| {
                let dict = PyDict::new(py);
                let fill = || -> PyResult<()> {
                    dict.set_item("method", summary.method.as_str())?;
                    dict.set_item("path", &summary.path)?;
                    dict.set_item("authority", &summary.authority)?;
                    dict.set_item("route", summary.route_name())?;
                    dict.set_item("service", summary.service_name())?;
                    let endpoint = summary.endpoint.map(|e| e.to_string());
                    dict.set_item("endpoint", endpoint.unwrap_or_default())?;
                    dict.set_item("zone", summary.zone.as_deref().unwrap_or(""))?;
                    dict.set_item("status", summary.status)?;
                    dict.set_item("duration_ms", summary.duration_ms)?;
                    dict.set_item("ttfb_ms", summary.ttfb_ms)?;
                    dict.set_item("response_bytes", summary.response_bytes)?;
                    dict.set_item("retried", summary.retried)?;
                    dict.set_item("identity", summary.identity)?;
                    host.host
                        .bind(py)
                        .call_method1("on_log", (req.map(|r| r.0), dict))?;
                    Ok(())
                };
                if let Err(e) = fill() {
                    eprintln!("meshcore: plugins: on_log failed: {}", error_text(py, e));
                }
            })
        });
    }
}
