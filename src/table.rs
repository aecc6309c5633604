//! The routing table: everything a request needs, built from one config
//! snapshot and swapped atomically on reload.

use crate::balance::Balancer;
use crate::config::{Config, UpstreamProtocol};
use crate::http::client::{EndpointPool, Settings};
use crate::route::Route;
use std::sync::Arc;
use std::time::Duration;

pub struct Service {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub balancer: Balancer,
    /// One pool per balancer endpoint, same order.
    pub pools: Vec<Arc<EndpointPool>>,
}

pub struct Table {
    pub services: Vec<Service>,
    /// Routes per listener, indexed like `Config::listeners`.
    pub routes: Vec<Vec<Route>>,
    /// Opaque target per listener.
    pub opaque: Vec<Option<usize>>,
    pub config: Config,
}

impl Table {
    /// Builds a table; endpoint state and connection pools of services that
    /// `previous` already had are carried over.
    pub fn build(config: Config, previous: Option<&Table>) -> Result<Table, String> {
        let mut services = Vec::new();
        for svc in &config.services {
            let old = previous.and_then(|p| p.services.iter().find(|s| *s.name == svc.name));
            let balancer = Balancer::from_config(svc, old.map(|o| &o.balancer));
            let settings = Arc::new(Settings {
                connect_timeout: Duration::from_millis(svc.connect_timeout_ms),
                idle_timeout: Duration::from_millis(svc.idle_timeout_ms),
            });
            let pools = balancer
                .endpoints()
                .iter()
                .map(|ep| {
                    let reuse = old.and_then(|o| {
                        let i = o.balancer.endpoints().iter().position(|e| Arc::ptr_eq(e, ep))?;
                        Some(o.pools[i].clone())
                    });
                    reuse.unwrap_or_else(|| Arc::new(EndpointPool::new(ep.addr, settings.clone())))
                })
                .collect();
            services.push(Service {
                name: Arc::from(svc.name.as_str()),
                protocol: svc.protocol,
                balancer,
                pools,
            });
        }
        let service_index = |name: &str| config.services.iter().position(|s| s.name == name);
        let mut routes: Vec<Vec<Route>> = config.listeners.iter().map(|_| Vec::new()).collect();
        for (i, r) in config.routes.iter().enumerate() {
            let listener = config
                .listeners
                .iter()
                .position(|l| l.name == r.listener)
                .ok_or_else(|| format!("routes[{i}].listener: unknown listener {:?}", r.listener))?;
            routes[listener].push(Route::new(i, r, service_index)?);
        }
        let opaque = config
            .listeners
            .iter()
            .map(|l| l.service.as_deref().and_then(service_index))
            .collect();
        Ok(Table {
            services,
            routes,
            opaque,
            config,
        })
    }

    /// Per-endpoint state as JSON for the admin API.
    pub fn endpoints_json(&self) -> serde_json::Value {
        let services: Vec<_> = self
            .services
            .iter()
            .map(|s| {
                let eps: Vec<_> = s
                    .balancer
                    .endpoints()
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "addr": e.addr.to_string(),
                            "zone": &*e.zone,
                            "ewma_ms": (e.rtt_ms() * 1000.0).round() / 1000.0,
                            "pending": e.pending(),
                            "requests": e.requests(),
                            "failures": e.failures(),
                        })
                    })
                    .collect();
                serde_json::json!({"name": &*s.name, "endpoints": eps})
            })
            .collect();
        serde_json::json!({ "services": services })
    }
}
