//! The routing table: everything a request needs, built from one config
//! snapshot and swapped atomically on reload.

use crate::balance::Balancer;
use crate::config::{self, Config, UpstreamProtocol};
use crate::metrics::{BalancerGauges, ENDPOINT_STATES};
use crate::policy::Policy;
use crate::route::{Route, Routes};
use crate::tls::{self, identity::Identity};
use crate::transparent::{Destinations, Egress};
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

impl Service {
    /// Builds one service's balancer and pools; endpoints (and their pools)
    /// that `old` already had are kept with their state.
    fn build(
        svc: &config::Service,
        root: &Config,
        old: Option<&Service>,
        identity: Option<&Arc<Identity>>,
    ) -> Result<Service, String> {
        let balancer = Balancer::from_config(svc, root, old.map(|o| &o.balancer));
        let settings = Arc::new(Settings {
            connect_timeout: Duration::from_millis(svc.connect_timeout_ms),
            idle_timeout: Duration::from_millis(svc.idle_timeout_ms),
        });
        let mut pools = Vec::with_capacity(balancer.endpoints().len());
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
                        handshakes: identity.handshakes.clone(),
                    };
                    Arc::new(EndpointPool::new(ep.addr, settings.clone(), Some(tls)))
                }
            };
            pools.push(pool);
        }
        Ok(Service {
            name: Arc::from(svc.name.as_str()),
            protocol: svc.protocol,
            balancer,
            pools,
        })
    }
}

/// A table is swapped whole, but an endpoint update shares all of it but the
/// services it changes (`with_endpoints`): a mesh's table holds thousands.
pub struct Table {
    pub services: Vec<Arc<Service>>,
    /// Service name -> its index in `services` (the first of a name).
    service_index: Arc<HashMap<Arc<str>, usize>>,
    /// Each listener's id, in `Config::listeners` order. A listener keeps
    /// its id across reloads while its name stays, so that a connection
    /// accepted before a reload finds its routes in the new table.
    pub listener_ids: Vec<usize>,
    /// Per listener id ever given: its listener's place in
    /// `Config::listeners` (None for a removed listener). A renamed listener's
    /// old id points at its new place too (`alias`).
    slots: Vec<Option<usize>>,
    /// Routes per listener, indexed by host, in `Config::listeners` order.
    routes: Arc<[Routes]>,
    /// Opaque target per listener, in `Config::listeners` order.
    opaque: Vec<Option<usize>>,
    pub policy: Arc<Policy>,
    /// Where a transparent listener's connections go (empty without one).
    pub destinations: Arc<Destinations>,
    /// Per service, the route a transparent listener's request takes when
    /// none of the listener's own goes there (empty without one).
    pub service_routes: Arc<[Route]>,
    pub egress: Arc<Egress>,
    /// The config the table was built from, without its routes and policy
    /// rules (built into `routes` and `policy`). After `with_endpoints` its
    /// services' endpoint lists are those of the build, not the update's:
    /// only listeners, services' settings and the proxy's own are read from it.
    pub config: Arc<Config>,
}

impl Table {
    /// Builds a table; endpoint state and connection pools of services that
    /// `previous` already had are carried over.
    pub fn build(
        config: Config,
        previous: Option<&Table>,
        identity: Option<&Arc<Identity>>,
    ) -> Result<Table, String> {
        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            // By name, through the index: a mesh holds thousands of services.
            let old = previous.and_then(|p| Some(&*p.services[*p.service_index.get(svc.name.as_str())?]));
            services.push(Arc::new(Service::build(svc, &config, old, identity)?));
        }
        let mut service_places: HashMap<Arc<str>, usize> = HashMap::with_capacity(services.len());
        for (place, s) in services.iter().enumerate().rev() {
            service_places.insert(s.name.clone(), place);
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
        let policy = Arc::new(Policy::new(&config.policy)?);
        let destinations = Arc::new(destinations_of(&config, &services)?);
        let service_routes = match config.listeners.iter().any(|l| l.transparent) {
            true => (services.iter().enumerate())
                .map(|(i, s)| Route::to_service(i, &s.name))
                .collect(),
            false => Arc::from([]),
        };
        let egress = Arc::new(Egress::new(&config.egress)?);
        // Built into `routes` and `policy`: a mesh's thousands of route documents are not kept twice.
        let mut config = config;
        config.routes = Vec::new();
        config.policy.rules = Vec::new();
        Ok(Table {
            services,
            service_index: Arc::new(service_places),
            listener_ids,
            slots,
            routes,
            opaque,
            policy,
            destinations,
            service_routes,
            egress,
            config: Arc::new(config),
        })
    }

    /// This table with the endpoints of the named services replaced, all else
    /// shared: endpoints that stay keep their latency, breaker and pool.
    pub fn with_endpoints(
        &self,
        updates: &[(String, Vec<config::Endpoint>)],
        identity: Option<&Arc<Identity>>,
    ) -> Result<Table, String> {
        let mut services = self.services.clone();
        for (name, endpoints) in updates {
            let place = *self
                .service_index
                .get(name.as_str())
                .ok_or_else(|| format!("update_endpoints: unknown service {name:?}"))?;
            let Some(svc) = self.config.services.get(place) else {
                return Err(format!("update_endpoints: service {name:?} is not in the config"));
            };
            for (i, e) in endpoints.iter().enumerate() {
                e.addr.parse::<std::net::SocketAddr>().map_err(|err| {
                    format!(
                        "update_endpoints: {name}: endpoints[{i}].addr {:?}: {err}",
                        e.addr
                    )
                })?;
            }
            let svc = config::Service {
                endpoints: endpoints.clone(),
                ..svc.clone()
            };
            services[place] = Arc::new(Service::build(
                &svc,
                &self.config,
                Some(&services[place]),
                identity,
            )?);
        }
        // Endpoint addresses moved: a transparent listener's index follows them.
        let destinations = Arc::new(destinations_of(&self.config, &services)?);
        Ok(Table {
            services,
            service_index: self.service_index.clone(),
            listener_ids: self.listener_ids.clone(),
            slots: self.slots.clone(),
            routes: self.routes.clone(),
            opaque: self.opaque.clone(),
            policy: self.policy.clone(),
            destinations,
            service_routes: self.service_routes.clone(),
            egress: self.egress.clone(),
            config: self.config.clone(),
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

/// The transparent listeners' destinations; none when no listener is one.
fn destinations_of(config: &Config, services: &[Arc<Service>]) -> Result<Destinations, String> {
    if !config.listeners.iter().any(|l| l.transparent) {
        return Ok(Destinations::default());
    }
    Destinations::new(&config.services, services.iter().map(|s| s.balancer.endpoints()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures;

    fn two_services() -> Table {
        let mut config = fixtures::config();
        config.listeners = vec![fixtures::listener("l", "127.0.0.1:0")];
        config.routes = vec![fixtures::route("l")];
        config.services = vec![
            fixtures::service("web", &["127.0.0.1:1001", "127.0.0.1:1002"]),
            fixtures::service("api", &["127.0.0.1:2001"]),
        ];
        Table::build(config, None, None).expect("a table")
    }

    #[test]
    fn an_endpoint_update_keeps_what_stays_and_shares_the_rest() {
        let before = two_services();
        let update = vec![(
            "web".to_string(),
            vec![
                fixtures::endpoint("127.0.0.1:1002"),
                fixtures::endpoint("127.0.0.1:1003"),
            ],
        )];
        let after = before.with_endpoints(&update, None).expect("updated");

        let (old, new) = (&before.services[0], &after.services[0]);
        let addrs: Vec<String> = new
            .balancer
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:1002", "127.0.0.1:1003"]);
        assert!(Arc::ptr_eq(
            &old.balancer.endpoints()[1],
            &new.balancer.endpoints()[0]
        ));
        assert!(Arc::ptr_eq(&old.pools[1], &new.pools[0]));
        assert_eq!(new.pools.len(), 2);
        // The other service, the routes and the policy are the same objects.
        assert!(Arc::ptr_eq(&before.services[1], &after.services[1]));
        assert!(Arc::ptr_eq(&before.routes, &after.routes));
        assert!(Arc::ptr_eq(&before.policy, &after.policy));
    }

    #[test]
    fn an_update_of_an_unknown_service_or_a_bad_address_changes_nothing() {
        let table = two_services();
        let unknown = vec![("nope".to_string(), vec![fixtures::endpoint("127.0.0.1:1")])];
        let err = table.with_endpoints(&unknown, None).err().expect("refused");
        assert!(err.contains("unknown service \"nope\""), "{err}");
        let bad = vec![("web".to_string(), vec![fixtures::endpoint("not an address")])];
        let err = table.with_endpoints(&bad, None).err().expect("refused");
        assert!(err.contains("web: endpoints[0].addr"), "{err}");
    }
}
