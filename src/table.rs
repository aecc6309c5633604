//! The routing table: everything a request needs, built from one config
//! snapshot and swapped atomically on reload.

use crate::balance::Balancer;
use crate::config::{Config, UpstreamProtocol};
use crate::metrics::{BalancerGauges, ENDPOINT_STATES};
use crate::policy::Policy;
use crate::route::{Route, Routes};
use crate::tls::{self, identity::Identity};
use crate::upstream::{EndpointPool, Settings, UpstreamTls};
use std::collections::HashMap;
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
    /// Each listener's id, in `Config::listeners` order. A listener keeps
    /// its id across reloads while its name stays, so that a connection
    /// accepted before a reload finds its routes in the new table.
    pub listener_ids: Vec<usize>,
    /// Per listener id ever given: its listener's place in
    /// `Config::listeners` (None for a removed listener). A renamed listener's
    /// old id points at its new place too (`alias`).
    slots: Vec<Option<usize>>,
    /// Routes per listener, indexed by host, in `Config::listeners` order.
    routes: Vec<Routes>,
    /// Opaque target per listener, in `Config::listeners` order.
    opaque: Vec<Option<usize>>,
    pub policy: Policy,
    pub config: Config,
}

impl Table {
    /// Builds a table; endpoint state and connection pools of services that
    /// `previous` already had are carried over.
    pub fn build(
        config: Config,
        previous: Option<&Table>,
        identity: Option<&Arc<Identity>>,
    ) -> Result<Table, String> {
        // By name, the first of a name as a scan finds it: a mesh holds thousands of services.
        let previous_services: HashMap<&str, &Service> = previous.map_or_else(HashMap::new, |p| {
            let mut by_name = HashMap::with_capacity(p.services.len());
            for s in p.services.iter().rev() {
                by_name.insert(&*s.name, s);
            }
            by_name
        });
        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            let old = previous_services.get(svc.name.as_str()).copied();
            let balancer = Balancer::from_config(svc, &config, old.map(|o| &o.balancer));
            let settings = Arc::new(Settings {
                connect_timeout: Duration::from_millis(svc.connect_timeout_ms),
                idle_timeout: Duration::from_millis(svc.idle_timeout_ms),
            });
            let mut pools = Vec::new();
            for ep in balancer.endpoints() {
                let reuse = old.and_then(|o| {
                    let i = o.balancer.endpoints().iter().position(|e| Arc::ptr_eq(e, ep))?;
                    Some(o.pools[i].clone())
                });
                let expected = svc
                    .endpoints
                    .iter()
                    .find(|e| e.addr.parse().ok() == Some(ep.addr))
                    .and_then(|e| e.identity.as_deref());
                let pool = match (reuse.filter(|p| p.serves(&settings, expected)), expected) {
                    (Some(p), _) => p,
                    (None, None) => Arc::new(EndpointPool::new(ep.addr, settings.clone(), None)),
                    (None, Some(id)) => {
                        let identity = identity.ok_or_else(|| {
                            format!(
                                "services.{}: endpoint identity {id:?} needs an [identity] section",
                                svc.name
                            )
                        })?;
                        let tls = UpstreamTls {
                            identity: id.to_string(),
                            h2: tls::client_config(identity, id, true)?,
                            h1: tls::client_config(identity, id, false)?,
                        };
                        Arc::new(EndpointPool::new(ep.addr, settings.clone(), Some(tls)))
                    }
                };
                pools.push(pool);
            }
            services.push(Service {
                name: Arc::from(svc.name.as_str()),
                protocol: svc.protocol,
                balancer,
                pools,
            });
        }
        let mut service_places = HashMap::with_capacity(config.services.len());
        for (place, s) in config.services.iter().enumerate().rev() {
            service_places.insert(s.name.as_str(), place);
        }
        let service_index = |name: &str| service_places.get(name).copied();
        let mut next_id = previous.map_or(0, |p| p.slots.len());
        let listener_ids: Vec<usize> = (config.listeners.iter())
            .map(|l| {
                previous.and_then(|p| p.listener_id(&l.name)).unwrap_or_else(|| {
                    next_id += 1;
                    next_id - 1
                })
            })
            .collect();
        let mut slots = vec![None; next_id];
        for (place, &id) in listener_ids.iter().enumerate() {
            slots[id] = Some(place);
        }
        let mut routes: Vec<Vec<Route>> = config.listeners.iter().map(|_| Vec::new()).collect();
        for (i, r) in config.routes.iter().enumerate() {
            let listener = config
                .listeners
                .iter()
                .position(|l| l.name == r.listener)
                .ok_or_else(|| format!("routes[{i}].listener: unknown listener {:?}", r.listener))?;
            routes[listener].push(Route::new(i, r, service_index)?);
        }
        let routes = routes.into_iter().map(Routes::new).collect();
        let opaque = (config.listeners.iter())
            .map(|l| l.service.as_deref().and_then(service_index))
            .collect();
        let policy = Policy::new(&config.policy)?;
        Ok(Table {
            services,
            listener_ids,
            slots,
            routes,
            opaque,
            policy,
            config,
        })
    }

    /// The id of the listener named `name`, if this table has it.
    pub fn listener_id(&self, name: &str) -> Option<usize> {
        let position = self.config.listeners.iter().position(|l| l.name == name)?;
        Some(self.listener_ids[position])
    }

    /// The routes of the listener with id `id`; none for a removed listener.
    pub fn routes_of(&self, id: usize) -> &[Route] {
        match self.slots.get(id).copied().flatten() {
            Some(place) => self.routes[place].as_slice(),
            None => &[],
        }
    }

    /// The index in `routes_of(id)` of the first route that matches the request.
    pub fn find_route(&self, id: usize, host: &str, path: &str, headers: &http::HeaderMap) -> Option<usize> {
        let place = self.slots.get(id).copied().flatten()?;
        self.routes[place].find(host, path, headers)
    }

    /// The opaque target service of the listener with id `id`.
    pub fn opaque_of(&self, id: usize) -> Option<usize> {
        self.opaque[self.slots.get(id).copied().flatten()?]
    }

    /// Lets connections of listener `old_id` (renamed to `name` in this
    /// table, its sockets kept) find `name`'s routes.
    pub fn alias(&mut self, old_id: usize, name: &str) {
        let place = self.config.listeners.iter().position(|l| l.name == name);
        if let Some(slot) = self.slots.get_mut(old_id) {
            *slot = place;
        }
    }

    /// Per-endpoint state as JSON for the admin API.
    pub fn endpoints_json(&self) -> serde_json::Value {
        let now = std::time::Instant::now();
        let services: Vec<_> = self
            .services
            .iter()
            .map(|s| {
                let standing = s.balancer.standing(now);
                let eps: Vec<_> = s
                    .balancer
                    .endpoints()
                    .iter()
                    .zip(standing)
                    .map(|(e, st)| {
                        serde_json::json!({
                            "addr": e.addr.to_string(),
                            "zone": &*e.zone,
                            "cluster": e.cluster.as_deref(),
                            "tier": e.tier,
                            "state": st.as_str(),
                            "ewma_ms": (e.rtt_ms() * 1000.0).round() / 1000.0,
                            "pending": e.pending(),
                            "requests": e.requests(),
                            "failures": e.failures(),
                            "trips": e.trips(),
                        })
                    })
                    .collect();
                let zonal = s.balancer.zonal();
                serde_json::json!({
                    "name": &*s.name,
                    "balancer": s.balancer.kind(),
                    "panic": s.balancer.in_panic(now),
                    "active_tiers": zonal.map(|z| z.active_tiers()),
                    "load": zonal.map(|z| (z.load() * 1000.0).round() / 1000.0),
                    "endpoints": eps,
                })
            })
            .collect();
        serde_json::json!({ "services": services })
    }
}

impl Table {
    /// Each service's balancer as it stands now, for the metrics scrape.
    pub fn balancer_gauges(&self) -> Vec<BalancerGauges> {
        let now = std::time::Instant::now();
        self.services
            .iter()
            .map(|s| {
                let load = match s.balancer.zonal() {
                    Some(z) => z.load(),
                    None => {
                        let eps = s.balancer.endpoints();
                        eps.iter().map(|e| e.pending()).sum::<usize>() as f64 / eps.len().max(1) as f64
                    }
                };
                let standing = s.balancer.standing(now);
                let count = |state| standing.iter().filter(|&&x| x == state).count();
                BalancerGauges {
                    service: s.name.clone(),
                    active_tiers: s.balancer.zonal().map_or(1, |z| z.active_tiers()),
                    load,
                    panic: s.balancer.in_panic(now),
                    endpoints: ENDPOINT_STATES.map(count),
                }
            })
            .collect()
    }
}
