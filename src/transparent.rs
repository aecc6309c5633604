//! A transparent listener's view of the table: where a redirected
//! connection goes, by the destination its client asked for.
//!
//! - a service's virtual address (`addresses`) -> that service, balanced;
//! - one of its endpoints' own addresses -> that endpoint;
//! - anything else -> passed through as TCP, if the egress policy allows.

use crate::config::{self, EgressAction};
use crate::policy::{in_network, parse_cidr};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Indexes into the table the destination was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Service(usize),
    Endpoint { service: usize, endpoint: usize },
}

#[derive(Default)]
pub struct Destinations(HashMap<SocketAddr, Destination>);

impl Destinations {
    /// From each service's virtual addresses and its endpoints' addresses
    /// (`endpoints[i]`: service i's, in balancer order). The first service
    /// to claim an address keeps it.
    pub fn new<'a>(
        services: &[config::Service],
        endpoints: impl Iterator<Item = &'a [std::sync::Arc<crate::balance::Endpoint>]>,
    ) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (i, svc) in services.iter().enumerate() {
            for (j, addr) in svc.addresses.iter().enumerate() {
                let addr: SocketAddr = (addr.parse())
                    .map_err(|e| format!("services.{}.addresses[{j}] {addr:?}: {e}", svc.name))?;
                map.entry(addr).or_insert(Destination::Service(i));
            }
        }
        for (service, eps) in endpoints.enumerate() {
            for (endpoint, ep) in eps.iter().enumerate() {
                map.entry(ep.addr)
                    .or_insert(Destination::Endpoint { service, endpoint });
            }
        }
        Ok(Destinations(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where `dst` goes: its exact address; inbound, else a service's
    /// "any address" on its port (`0.0.0.0:PORT`, `[::]:PORT`: the app behind
    /// this sidecar). Outbound, another host on that port is not the app.
    pub fn find(&self, dst: SocketAddr, inbound: bool) -> Option<Destination> {
        if self.0.is_empty() {
            return None;
        }
        if let Some(exact) = self.0.get(&dst) {
            return Some(*exact);
        }
        if !inbound {
            return None;
        }
        let any: IpAddr = match dst.ip() {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        self.0.get(&SocketAddr::new(any, dst.port())).copied()
    }
}

struct Rule {
    allow: bool,
    networks: Vec<(IpAddr, u8)>,
    ports: Vec<(u16, u16)>,
}

/// Whether a passed-through connection may leave: the first rule whose
/// networks and ports match decides, else the default.
pub struct Egress {
    allow_by_default: bool,
    rules: Vec<Rule>,
}

impl Egress {
    pub fn new(cfg: &config::Egress) -> Result<Self, String> {
        let rules = (cfg.rules.iter().enumerate())
            .map(|(i, r)| {
                let networks = (r.networks.iter())
                    .map(|n| parse_cidr(n).map_err(|e| format!("egress.rules[{i}].networks: {e}")))
                    .collect::<Result<_, _>>()?;
                Ok(Rule {
                    allow: r.action == EgressAction::Allow,
                    networks,
                    ports: r.ports.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Egress {
            allow_by_default: cfg.default == EgressAction::Allow,
            rules,
        })
    }

    pub fn allows(&self, dst: SocketAddr) -> bool {
        let matches = |r: &&Rule| {
            r.networks.iter().any(|&n| in_network(dst.ip(), n))
                && (r.ports.is_empty() || r.ports.iter().any(|&(a, b)| (a..=b).contains(&dst.port())))
        };
        self.rules
            .iter()
            .find(matches)
            .map_or(self.allow_by_default, |r| r.allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures;

    #[test]
    fn virtual_addresses_then_endpoints_then_any_address_on_the_port() {
        let mut web = fixtures::service("web", &["10.0.0.1:8080"]);
        web.addresses = vec!["10.96.0.10:80".into()];
        let mut app = fixtures::service("app", &["127.0.0.1:8080"]);
        app.addresses = vec!["0.0.0.0:8080".into()];
        let services = [web, app];
        let balancers: Vec<_> = (services.iter())
            .map(|s| crate::balance::Balancer::from_config(s, &fixtures::config(), None))
            .collect();
        let d = Destinations::new(&services, balancers.iter().map(|b| b.endpoints())).expect("built");
        let at = |s: &str| d.find(s.parse().unwrap(), true);
        assert_eq!(at("10.96.0.10:80"), Some(Destination::Service(0)));
        assert_eq!(
            at("10.0.0.1:8080"),
            Some(Destination::Endpoint {
                service: 0,
                endpoint: 0
            })
        );
        assert_eq!(
            at("10.1.2.3:8080"),
            Some(Destination::Service(1)),
            "any address on 8080"
        );
        assert_eq!(at("10.96.0.10:81"), None);
        assert_eq!(at("[fd00::1]:80"), None);
        // Outbound, another host on the app's port is that host, not the app.
        let outbound = |s: &str| d.find(s.parse().unwrap(), false);
        assert_eq!(outbound("10.1.2.3:8080"), None);
        assert_eq!(outbound("10.96.0.10:80"), Some(Destination::Service(0)));
    }

    #[test]
    fn egress_first_matching_rule_else_default() {
        let rule = |action, nets: &[&str], ports: &[(u16, u16)]| config::EgressRule {
            action,
            networks: nets.iter().map(|n| n.to_string()).collect(),
            ports: ports.to_vec(),
        };
        let egress = Egress::new(&config::Egress {
            default: EgressAction::Deny,
            rules: vec![
                rule(EgressAction::Deny, &["10.0.0.66/32"], &[]),
                rule(EgressAction::Allow, &["10.0.0.0/8"], &[(443, 443), (8000, 8100)]),
            ],
        })
        .expect("built");
        let allows = |s: &str| egress.allows(s.parse().unwrap());
        assert!(allows("10.1.2.3:443") && allows("10.1.2.3:8050"));
        assert!(!allows("10.1.2.3:80"), "a port no rule names");
        assert!(!allows("10.0.0.66:443"), "the first rule denies");
        assert!(!allows("192.168.1.1:443"), "the default");
    }
}
