//! `ProxyCore`: one proxy instance, as Python's `meshcore.Proxy` drives it.

use super::errors::{BindError, ConfigError, MeshcoreError, TlsError};
use super::guarded;
use super::handover::Inherited;
use super::metrics::{plugin_report, PyPluginReport};
use crate::{config, metrics, plugin, runtime};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
pub struct ProxyCore {
    config: Mutex<Option<config::Config>>,
    /// Shared, and the lock held only to clone it: a call that waits (a
    /// reload closing listeners, without the GIL) must never hold a lock that
    /// another call takes while holding the GIL.
    running: Mutex<Option<Arc<runtime::Running>>>,
}

impl ProxyCore {
    fn with_running<T>(&self, f: impl FnOnce(&runtime::Running) -> PyResult<T>) -> PyResult<T> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match running {
            Some(r) => f(&r),
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

    /// Binds every listener and starts serving; returns once bound. A
    /// listener named in `assignment` serves on those `inherited` sockets
    /// instead of binding its own.
    #[pyo3(signature = (inherited=None, assignment=None))]
    fn start(
        &self,
        py: Python<'_>,
        inherited: Option<PyRef<'_, Inherited>>,
        assignment: Option<HashMap<String, Vec<usize>>>,
    ) -> PyResult<()> {
        guarded(|| {
            let mut sockets = runtime::Inherited::default();
            for (name, indexes) in assignment.unwrap_or_default() {
                let from = inherited
                    .as_deref()
                    .ok_or_else(|| MeshcoreError::new_err("an assignment needs the inherited sockets"))?;
                let taken = (indexes
                    .iter()
                    .map(|&i| from.take_fd(i).map(std::net::TcpListener::from)))
                .collect::<PyResult<Vec<_>>>()?;
                sockets.insert(name, taken);
            }
            let config = self
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| MeshcoreError::new_err("proxy was already started"))?;
            // Each worker thread attaches to the interpreter once and then detaches
            // for its whole life: its thread state stays, so plugin calls on that
            // thread only take the GIL instead of creating a thread state each time.
            let wrap: runtime::ThreadWrapper = Arc::new(|body| Python::attach(|py| py.detach(body)));
            let running = py
                .detach(|| runtime::start(config, Some(wrap), sockets))
                .map_err(start_error)?;
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(running));
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

    fn reload(&self, py: Python<'_>, config_json: &str) -> PyResult<()> {
        guarded(|| {
            let config = config::Config::from_json(config_json).map_err(ConfigError::new_err)?;
            // Without the GIL: closing a listener waits for worker threads,
            // which may be waiting for it in a plugin hook.
            self.with_running(|r| py.detach(|| r.reload(config)).map_err(start_error))
        })
    }

    /// Replaces the endpoints of services without rebuilding the table:
    /// `updates_json` is a list of [service name, endpoints as in the config].
    fn update_endpoints(&self, py: Python<'_>, updates_json: &str) -> PyResult<()> {
        guarded(|| {
            let updates: Vec<(String, Vec<config::Endpoint>)> = serde_json::from_str(updates_json)
                .map_err(|e| ConfigError::new_err(format!("update_endpoints: {e}")))?;
            self.with_running(|r| py.detach(|| r.update_endpoints(&updates)).map_err(start_error))
        })
    }

    fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Listener name -> "ip:port" actually bound.
    fn addresses(&self) -> PyResult<Vec<(String, String)>> {
        self.with_running(|r| {
            Ok(r.addresses()
                .into_iter()
                .map(|(n, a)| (n, a.to_string()))
                .collect())
        })
    }

    /// (listener name, configured bind, descriptor) of every listening
    /// socket, for a process taking over. The descriptors stay this proxy's.
    fn listening_sockets(&self) -> PyResult<Vec<(String, String, i32)>> {
        self.with_running(|r| Ok(r.listening_sockets()))
    }

    /// Prometheus text exposition of every family, the plugin host's numbers
    /// (`PluginHost.metrics_report()`) included when it is given.
    #[pyo3(signature = (plugins=None))]
    fn metrics(&self, plugins: Option<PyPluginReport>) -> PyResult<String> {
        guarded(|| {
            let plugins = plugins.map(plugin_report).transpose()?;
            self.with_running(|r| {
                let table = r.shared.table.load();
                let balancers = table.balancer_gauges();
                let scrape = metrics::Scrape {
                    balancers: Some(&balancers),
                    identity: r.shared.identity.as_deref(),
                    plugins: plugins.as_ref(),
                    telemetry: Some(&r.shared.telemetry),
                };
                Ok(r.shared.metrics.render(&scrape))
            })
        })
    }

    /// Golden numbers per route since start, as a JSON document: the
    /// latency bucket bounds, then per route its responses, failures and
    /// latencies per bucket (not cumulative).
    fn route_stats(&self) -> PyResult<String> {
        guarded(|| {
            self.with_running(|r| {
                let metrics = &r.shared.metrics;
                let golden = metrics.golden_stats();
                let authorization: Vec<_> = metrics
                    .authorization_counts()
                    .into_iter()
                    .map(|(l, allowed, count)| {
                        serde_json::json!({
                            "listener": &*l.listener,
                            "rule": &*l.rule,
                            "decision": if allowed { "allow" } else { "deny" },
                            "count": count,
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "buckets_ms": metrics::LATENCY_BUCKETS_MS.to_vec(),
                    "routes": stats_json(golden.routes),
                    "services": stats_json(golden.services),
                    "authorization": authorization,
                });
                Ok(doc.to_string())
            })
        })
    }

    /// A live feed of request summaries matching the filters (None: any),
    /// holding at most `capacity` unread. MeshcoreError when the most taps
    /// are already open.
    #[pyo3(signature = (route=None, service=None, authority=None, capacity=1024))]
    fn tap(
        &self,
        route: Option<String>,
        service: Option<String>,
        authority: Option<String>,
        capacity: usize,
    ) -> PyResult<super::tap::Tap> {
        self.with_running(|r| {
            let filter = crate::telemetry::tap::Filter {
                route,
                service,
                authority,
            };
            let taps = &r.shared.telemetry.taps;
            let tap = taps.open(filter, capacity.clamp(1, 65_536)).ok_or_else(|| {
                MeshcoreError::new_err(format!(
                    "{} taps are open already, the most at once",
                    crate::telemetry::tap::MAX_TAPS
                ))
            })?;
            Ok(super::tap::Tap::new(tap))
        })
    }

    /// Counts a lifecycle event for `/metrics`: "reload" with its result, or
    /// "rollback" with its reason. ValueError for another event.
    fn count_lifecycle(&self, event: &str, label: &str) -> PyResult<()> {
        self.with_running(|r| {
            (r.shared.metrics)
                .lifecycle(event, label)
                .map_err(pyo3::exceptions::PyValueError::new_err)
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
                .store(Some(Arc::new(plugin::PluginHost::new(host))));
            Ok(())
        })
    }

    /// Trusts exactly the anchors in `pem` from the next handshake on.
    fn set_trust_anchors(&self, pem: &str) -> PyResult<()> {
        guarded(|| {
            self.with_running(|r| match &r.shared.identity {
                Some(identity) => identity.set_anchors(pem).map_err(TlsError::new_err),
                None => Err(TlsError::new_err("this proxy has no [identity] configured")),
            })
        })
    }

    /// The identity as JSON, None without one: the certificate in use (SPIFFE
    /// ID, expiry as unix seconds, the anchors it chains to by SHA-256) and
    /// the trust anchors (subject, SHA-256, expiry).
    fn identity_info(&self) -> PyResult<Option<String>> {
        self.with_running(|r| {
            let Some(identity) = &r.shared.identity else {
                return Ok(None);
            };
            let anchors = identity.anchors();
            let current = identity.current();
            let chains_to: Vec<&str> = current
                .as_ref()
                .map(|c| {
                    anchors
                        .chained_to(&c.key.cert)
                        .into_iter()
                        .map(|a| a.sha256.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let info = serde_json::json!({
                "spiffe_id": current.as_ref().and_then(|c| c.spiffe_id.clone()),
                "not_after": current.as_ref().map(|c| c.not_after),
                "chains_to": chains_to,
                "trust_anchors": anchors.list,
            });
            Ok(Some(info.to_string()))
        })
    }

    fn open_connections(&self) -> PyResult<usize> {
        self.with_running(|r| Ok(r.shared.connections.open()))
    }

    fn connection_peak(&self) -> PyResult<(usize, usize)> {
        self.with_running(|r| Ok(r.shared.connections.take_peak()))
    }
}

fn stats_json(stats: Vec<(Arc<str>, metrics::RouteStats)>) -> serde_json::Value {
    stats
        .into_iter()
        .map(|(name, s)| {
            let value = serde_json::json!({
                "responses": s.responses,
                "failures": s.failures,
                "cross_zone": s.cross_zone,
                "buckets": s.buckets.to_vec(),
            });
            (name.to_string(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
