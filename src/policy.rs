//! Inbound authorization by the caller's verified identity and network.

use crate::config::{self, DefaultPolicy};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; names the rule (or default) that allowed it. Names are
    /// shared, so a decision per request allocates nothing.
    Allow(Arc<str>),
    /// Allowed only because the default is audit; it would have been denied.
    Audit,
    Deny(Arc<str>),
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    listener: String,
    path_prefix: Option<String>,
    identities: Vec<String>,
    networks: Vec<(IpAddr, u8)>,
}

#[derive(Debug)]
pub struct Policy {
    default: DefaultPolicy,
    /// The default's name as a rule label, e.g. "default:deny".
    default_name: Arc<str>,
    rules: Vec<Rule>,
}

/// "10.0.0.0/8" -> (10.0.0.0, 8); a bare address is a /32 or /128.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("invalid network {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or(format!("invalid prefix in {s:?}"))?,
        None => max,
    };
    Ok((ip, len))
}

pub fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
            Some(a) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            None => return false,
        },
        _ => return false,
    };
    if len == 0 {
        return true;
    }
    let shift = bits - u32::from(len);
    (ip >> shift) == (net >> shift)
}

/// `*` stands for exactly one path segment of the SPIFFE ID.
pub fn identity_matches(pattern: &str, id: &str) -> bool {
    let mut p = pattern.split('/');
    let mut i = id.split('/');
    loop {
        match (p.next(), i.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

impl Policy {
    pub fn new(cfg: &config::Policy) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let networks = r
                .networks
                .iter()
                .map(|n| parse_cidr(n).map_err(|e| format!("policy.rules[{i}].networks: {e}")))
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                name: Arc::from(r.name.clone().unwrap_or_else(|| format!("rules[{i}]"))),
                listener: r.listener.clone(),
                path_prefix: r.path_prefix.clone(),
                identities: r.identities.clone(),
                networks,
            });
        }
        let default_name = match cfg.default {
            DefaultPolicy::AllUnauthenticated => "default:all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "default:all-authenticated",
            DefaultPolicy::Deny => "default:deny",
            DefaultPolicy::Audit => "default:audit",
        };
        Ok(Policy {
            default: cfg.default,
            default_name: Arc::from(default_name),
            rules,
        })
    }

    /// `path` is None for opaque connections: rules with a path never match them.
    pub fn decide(
        &self,
        listener: &str,
        peer: IpAddr,
        identity: Option<&str>,
        path: Option<&str>,
    ) -> Decision {
        let matched = self.rules.iter().find(|r| {
            r.listener == listener
                && match (&r.path_prefix, path) {
                    (None, _) => true,
                    (Some(p), Some(path)) => crate::route::path_matches(p, path),
                    (Some(_), None) => false,
                }
                && (r.identities.is_empty()
                    || identity.is_some_and(|id| r.identities.iter().any(|p| identity_matches(p, id))))
                && (r.networks.is_empty() || r.networks.iter().any(|n| in_network(peer, *n)))
        });
        if let Some(rule) = matched {
            return Decision::Allow(rule.name.clone());
        }
        let name = self.default_name.clone();
        match self.default {
            DefaultPolicy::AllUnauthenticated => Decision::Allow(name),
            DefaultPolicy::AllAuthenticated if identity.is_some() => Decision::Allow(name),
            DefaultPolicy::AllAuthenticated | DefaultPolicy::Deny => Decision::Deny(name),
            DefaultPolicy::Audit => Decision::Audit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: DefaultPolicy, rules: Vec<config::PolicyRule>) -> Policy {
        Policy::new(&config::Policy { default, rules }).unwrap()
    }

    fn rule(path: Option<&str>, ids: &[&str], nets: &[&str]) -> config::PolicyRule {
        config::PolicyRule {
            name: None,
            listener: "inbound".into(),
            path_prefix: path.map(String::from),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            networks: nets.iter().map(|s| s.to_string()).collect(),
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const WEB: &str = "spiffe://mesh.local/ns/default/sa/web";

    #[test]
    fn wildcards_match_one_segment() {
        assert!(identity_matches("spiffe://mesh.local/ns/*/sa/web", WEB));
        assert!(identity_matches(WEB, WEB));
        assert!(!identity_matches("spiffe://mesh.local/ns/*", WEB));
        assert!(!identity_matches("spiffe://mesh.local/ns/ops/sa/*", WEB));
    }

    #[test]
    fn cidrs() {
        assert!(in_network(LOCAL, parse_cidr("127.0.0.0/8").unwrap()));
        assert!(!in_network(LOCAL, parse_cidr("10.0.0.0/8").unwrap()));
        assert!(in_network(LOCAL, parse_cidr("0.0.0.0/0").unwrap()));
        assert!(in_network("::1".parse().unwrap(), parse_cidr("::1").unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn defaults() {
        let d =
            |p: DefaultPolicy, id: Option<&str>| policy(p, vec![]).decide("inbound", LOCAL, id, Some("/"));
        assert!(matches!(
            d(DefaultPolicy::AllUnauthenticated, None),
            Decision::Allow(_)
        ));
        assert!(matches!(
            d(DefaultPolicy::AllAuthenticated, Some(WEB)),
            Decision::Allow(_)
        ));
        assert!(matches!(
            d(DefaultPolicy::AllAuthenticated, None),
            Decision::Deny(_)
        ));
        assert!(matches!(d(DefaultPolicy::Deny, Some(WEB)), Decision::Deny(_)));
        assert_eq!(d(DefaultPolicy::Audit, None), Decision::Audit);
    }

    #[test]
    fn rules_combine_identity_network_and_path() {
        let p = policy(
            DefaultPolicy::Deny,
            vec![
                rule(
                    Some("/admin"),
                    &["spiffe://mesh.local/ns/ops/sa/*"],
                    &["127.0.0.0/8"],
                ),
                rule(None, &[WEB], &[]),
            ],
        );
        let ops = "spiffe://mesh.local/ns/ops/sa/alice";
        assert_eq!(
            p.decide("inbound", LOCAL, Some(ops), Some("/admin/x")),
            Decision::Allow("rules[0]".into())
        );
        assert!(matches!(
            p.decide("inbound", LOCAL, Some(ops), Some("/other")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide("inbound", "10.1.1.1".parse().unwrap(), Some(ops), Some("/admin")),
            Decision::Deny(_)
        ));
        assert_eq!(
            p.decide("inbound", LOCAL, Some(WEB), None),
            Decision::Allow("rules[1]".into())
        );
        assert!(matches!(
            p.decide("other", LOCAL, Some(WEB), None),
            Decision::Deny(_)
        ));
        // Opaque connections never match a path rule.
        assert!(matches!(
            p.decide("inbound", LOCAL, Some(ops), None),
            Decision::Deny(_)
        ));
    }
}
