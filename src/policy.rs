//! Inbound authorization by the caller's verified identity, network and
//! request method.
//!
//! A rule with a `path_prefix` or `routes` protects what it covers: a
//! request on a named route is allowed only by a rule naming that route,
//! and one under a prefix only by a rule of the most specific covering
//! prefix; when both protect it, both must allow it. A protected request no
//! such rule allows is denied, whatever the default. The other rules, and
//! then the default, decide only requests that nothing protects.

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

/// What an HTTP request asks, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// Normalised, as the application receives it.
    pub path: &'a str,
    pub method: &'a http::Method,
    /// The listener route routing found for it, if any.
    pub route: Option<&'a str>,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    /// Empty: every inbound listener.
    listeners: Vec<String>,
    scope: Option<Scope>,
    /// The routes it protects, each with its deny label ("protected:route:admin").
    routes: Vec<(String, Arc<str>)>,
    methods: Vec<http::Method>,
    identities: Vec<String>,
    networks: Vec<(IpAddr, u8)>,
}

/// The requests a rule protects.
#[derive(Debug)]
struct Scope {
    path_prefix: String,
    /// Its path segments: a longer prefix is more specific.
    depth: usize,
    /// The deny label, "protected:/admin", made once.
    denied: Arc<str>,
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
            let methods = r
                .methods
                .iter()
                .map(|m| {
                    http::Method::from_bytes(m.as_bytes())
                        .map_err(|_| format!("policy.rules[{i}].methods: {m:?} is not a method"))
                })
                .collect::<Result<_, _>>()?;
            if r.path_prefix.is_some() && !r.routes.is_empty() {
                let why = "a rule protects a path_prefix or routes, not both: write two rules";
                return Err(format!("policy.rules[{i}].routes: {why}"));
            }
            let routes = (r.routes.iter())
                .map(|name| (name.clone(), Arc::from(format!("protected:route:{name}"))))
                .collect();
            let scope = r.path_prefix.as_ref().map(|p| Scope {
                path_prefix: p.clone(),
                depth: p.split('/').filter(|s| !s.is_empty()).count(),
                denied: Arc::from(format!("protected:{p}")),
            });
            rules.push(Rule {
                name: Arc::from(r.name.clone().unwrap_or_else(|| format!("rules[{i}]"))),
                listeners: r.listeners.clone(),
                scope,
                routes,
                methods,
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

    /// `request` is None for opaque connections: rules with a path, routes
    /// or methods never match those.
    pub fn decide(
        &self,
        listener: &str,
        peer: IpAddr,
        identity: Option<&str>,
        request: Option<Asked<'_>>,
    ) -> Decision {
        self.evaluate(listener, peer, identity, request, &mut ())
    }

    /// The decision and how it was reached, as `meshcore policy explain`
    /// shows it: the same evaluation as `decide`, with its steps written down.
    pub fn explain(
        &self,
        listener: &str,
        peer: IpAddr,
        identity: Option<&str>,
        request: Option<Asked<'_>>,
    ) -> Explanation {
        let mut explanation = Explanation::default();
        let decision = self.evaluate(listener, peer, identity, request, &mut explanation);
        let (verdict, label) = match &decision {
            Decision::Allow(rule) => ("allow", rule.to_string()),
            Decision::Audit => ("audit", self.default_name.to_string()),
            Decision::Deny(rule) => ("deny", rule.to_string()),
        };
        explanation.decision = verdict;
        explanation.rule = label;
        explanation.default = self.default_name.to_string();
        explanation
    }

    fn evaluate(
        &self,
        listener: &str,
        peer: IpAddr,
        identity: Option<&str>,
        request: Option<Asked<'_>>,
        trace: &mut impl Trace,
    ) -> Decision {
        let on_listener = || {
            self.rules
                .iter()
                .filter(|r| r.listeners.is_empty() || r.listeners.iter().any(|l| l == listener))
        };
        if let Some(asked) = request {
            // Every tier that protects the request must allow it; the last to allow names it.
            let mut allowed: Option<&Rule> = None;
            if let Some(route) = asked.route {
                let covers = |r: &&Rule| r.protects_route(route).is_some();
                if let Some(first) = on_listener().find(covers) {
                    trace.protected_route(route);
                    match first_allowing(on_listener().filter(covers), peer, identity, request, trace) {
                        Some(rule) => allowed = Some(rule),
                        None => return Decision::Deny(first.protects_route(route).expect("covers").clone()),
                    }
                }
            }
            let covers = |r: &&Rule| {
                r.scope
                    .as_ref()
                    .is_some_and(|s| crate::route::path_matches(&s.path_prefix, asked.path))
            };
            let depth = |r: &Rule| r.scope.as_ref().map_or(0, |s| s.depth);
            if let Some(deepest) = on_listener().filter(covers).map(depth).max() {
                let mut tier = on_listener().filter(covers).filter(|r| depth(r) == deepest);
                let first = tier.next().expect("a rule of the deepest scope");
                let scope = first.scope.as_ref().expect("scoped");
                trace.protected(&scope.path_prefix);
                let tier = std::iter::once(first).chain(tier);
                match first_allowing(tier, peer, identity, request, trace) {
                    Some(rule) => allowed = Some(rule),
                    None => return Decision::Deny(scope.denied.clone()),
                }
            }
            if let Some(rule) = allowed {
                return Decision::Allow(rule.name.clone());
            }
        }
        let unscoped = on_listener().filter(|r| r.scope.is_none() && r.routes.is_empty());
        if let Some(rule) = first_allowing(unscoped, peer, identity, request, trace) {
            return Decision::Allow(rule.name.clone());
        }
        trace.defaulted();
        let name = self.default_name.clone();
        match self.default {
            DefaultPolicy::AllUnauthenticated => Decision::Allow(name),
            DefaultPolicy::AllAuthenticated if identity.is_some() => Decision::Allow(name),
            DefaultPolicy::AllAuthenticated | DefaultPolicy::Deny => Decision::Deny(name),
            DefaultPolicy::Audit => Decision::Audit,
        }
    }
}

/// The first of `rules` whose conditions the request meets, each try told to `trace`.
fn first_allowing<'r>(
    mut rules: impl Iterator<Item = &'r Rule>,
    peer: IpAddr,
    identity: Option<&str>,
    request: Option<Asked<'_>>,
    trace: &mut impl Trace,
) -> Option<&'r Rule> {
    rules.find(|rule| {
        let failed = rule.failed(peer, identity, request);
        trace.tried(&rule.name, failed);
        failed.is_none()
    })
}

impl Rule {
    /// The deny label of `route` when the rule protects it.
    fn protects_route(&self, route: &str) -> Option<&Arc<str>> {
        self.routes
            .iter()
            .find(|(name, _)| name == route)
            .map(|(_, denied)| denied)
    }

    /// The first of the rule's conditions the request does not meet.
    fn failed(&self, peer: IpAddr, identity: Option<&str>, request: Option<Asked<'_>>) -> Option<Condition> {
        if !(self.methods.is_empty() || request.is_some_and(|a| self.methods.contains(a.method))) {
            return Some(Condition::Method);
        }
        let named = |id: &str| self.identities.iter().any(|p| identity_matches(p, id));
        if !(self.identities.is_empty() || identity.is_some_and(named)) {
            return Some(Condition::Identity);
        }
        if !(self.networks.is_empty() || self.networks.iter().any(|n| in_network(peer, *n))) {
            return Some(Condition::Network);
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Method,
    Identity,
    Network,
}

/// What `evaluate` tells as it goes; the proxy's `()` listens to nothing.
trait Trace {
    fn protected_route(&mut self, _route: &str) {}
    fn protected(&mut self, _path_prefix: &str) {}
    fn tried(&mut self, _rule: &str, _failed: Option<Condition>) {}
    fn defaulted(&mut self) {}
}

impl Trace for () {}

/// A decision and its steps (`meshcore policy explain --json`).
#[derive(Debug, Default, serde::Serialize)]
pub struct Explanation {
    /// "allow", "deny" or "audit" (allowed, but it would be denied).
    pub decision: &'static str,
    /// The rule label metrics count it under.
    pub rule: String,
    /// What protects the request, in the order checked: "route NAME", then
    /// the prefix; only their rules decided. Empty: nothing protects it.
    pub protected_by: Vec<String>,
    /// Each rule tried, in order, and the condition it failed (none: it allowed).
    pub tried: Vec<Tried>,
    /// Whether the default decided, and which it is.
    pub default_decided: bool,
    pub default: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Tried {
    pub rule: String,
    pub failed: Option<Condition>,
}

impl Trace for Explanation {
    fn protected_route(&mut self, route: &str) {
        self.protected_by.push(format!("route {route}"));
    }

    fn protected(&mut self, path_prefix: &str) {
        self.protected_by.push(path_prefix.to_owned());
    }

    fn tried(&mut self, rule: &str, failed: Option<Condition>) {
        self.tried.push(Tried {
            rule: rule.to_owned(),
            failed,
        });
    }

    fn defaulted(&mut self) {
        self.default_decided = true;
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
            listeners: vec!["inbound".into()],
            path_prefix: path.map(String::from),
            routes: Vec::new(),
            methods: Vec::new(),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            networks: nets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn named(name: &str, r: config::PolicyRule) -> config::PolicyRule {
        config::PolicyRule {
            name: Some(name.into()),
            ..r
        }
    }

    fn get(path: &str) -> Option<Asked<'_>> {
        asked(path, &http::Method::GET, None)
    }

    fn asked<'a>(path: &'a str, method: &'a http::Method, route: Option<&'a str>) -> Option<Asked<'a>> {
        Some(Asked { path, method, route })
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
        let d = |p: DefaultPolicy, id: Option<&str>| policy(p, vec![]).decide("inbound", LOCAL, id, get("/"));
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
            p.decide("inbound", LOCAL, Some(ops), get("/admin/x")),
            Decision::Allow("rules[0]".into())
        );
        assert!(matches!(
            p.decide("inbound", LOCAL, Some(ops), get("/other")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide("inbound", "10.1.1.1".parse().unwrap(), Some(ops), get("/admin")),
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

    const OPS: &str = "spiffe://mesh.local/ns/ops/sa/alice";
    const BILLING: &str = "spiffe://mesh.local/ns/billing/sa/api";

    fn admin_for_ops() -> config::PolicyRule {
        named(
            "ops-admin",
            rule(Some("/admin"), &["spiffe://mesh.local/ns/ops/sa/*"], &[]),
        )
    }

    #[test]
    fn a_rule_for_a_path_protects_it_whatever_the_default() {
        for default in [
            DefaultPolicy::AllAuthenticated,
            DefaultPolicy::AllUnauthenticated,
            DefaultPolicy::Audit,
        ] {
            let p = policy(default, vec![admin_for_ops()]);
            let d = |id, path| p.decide("inbound", LOCAL, id, get(path));
            assert_eq!(d(Some(OPS), "/admin/x"), Decision::Allow("ops-admin".into()));
            assert_eq!(
                d(Some(WEB), "/admin/x"),
                Decision::Deny("protected:/admin".into())
            );
            assert_eq!(d(None, "/admin"), Decision::Deny("protected:/admin".into()));
            // Whole segments: /administrator is not under /admin, so the default decides.
            let default_decides = |path| match default {
                DefaultPolicy::Audit => d(Some(WEB), path) == Decision::Audit,
                _ => matches!(d(Some(WEB), path), Decision::Allow(n) if n.starts_with("default:")),
            };
            assert!(default_decides("/administrator"), "{default:?}");
            assert!(default_decides("/other"), "{default:?}");
        }
    }

    #[test]
    fn the_most_specific_prefix_decides_and_rules_of_one_prefix_add_up() {
        let p = policy(
            DefaultPolicy::AllAuthenticated,
            vec![
                admin_for_ops(),
                named("billing", rule(Some("/admin/billing/"), &[BILLING], &[])),
                named("web-admin", rule(Some("/admin"), &[WEB], &[])),
                named("web-anywhere", rule(None, &[WEB, BILLING], &[])),
            ],
        );
        let d = |id, path| p.decide("inbound", LOCAL, Some(id), get(path));
        assert_eq!(d(OPS, "/admin/x"), Decision::Allow("ops-admin".into()));
        assert_eq!(d(WEB, "/admin/x"), Decision::Allow("web-admin".into()));
        assert_eq!(d(BILLING, "/admin/x"), Decision::Deny("protected:/admin".into()));
        // The deeper prefix narrows: ops may not reach billing's part of /admin.
        assert_eq!(d(BILLING, "/admin/billing"), Decision::Allow("billing".into()));
        assert_eq!(
            d(OPS, "/admin/billing/1"),
            Decision::Deny("protected:/admin/billing/".into())
        );
        // An unscoped rule never opens a protected path, but decides the rest.
        assert_eq!(d(BILLING, "/shop"), Decision::Allow("web-anywhere".into()));
    }

    #[test]
    fn methods_narrow_a_rule_and_opaque_connections_match_no_method_rule() {
        let mut read_only = rule(Some("/admin"), &[WEB], &[]);
        read_only.methods = vec!["GET".into()];
        let mut unscoped = rule(None, &[OPS], &[]);
        unscoped.methods = vec!["POST".into()];
        let p = policy(DefaultPolicy::Deny, vec![read_only, unscoped]);
        let d = |id, path, m: &http::Method| p.decide("inbound", LOCAL, Some(id), asked(path, m, None));
        assert_eq!(
            d(WEB, "/admin", &http::Method::GET),
            Decision::Allow("rules[0]".into())
        );
        assert!(matches!(d(WEB, "/admin", &http::Method::POST), Decision::Deny(_)));
        assert!(matches!(d(WEB, "/admin", &http::Method::HEAD), Decision::Deny(_)));
        assert_eq!(
            d(OPS, "/x", &http::Method::POST),
            Decision::Allow("rules[1]".into())
        );
        assert!(matches!(d(OPS, "/x", &http::Method::GET), Decision::Deny(_)));
        assert!(matches!(
            p.decide("inbound", LOCAL, Some(OPS), None),
            Decision::Deny(_)
        ));
        let bad = config::PolicyRule {
            methods: vec!["GE T".into()],
            ..rule(None, &[], &[])
        };
        let err = Policy::new(&config::Policy {
            default: DefaultPolicy::Deny,
            rules: vec![bad],
        })
        .unwrap_err();
        assert!(err.contains("policy.rules[0].methods"), "{err}");
    }

    #[test]
    fn a_path_is_protected_only_on_the_rules_listeners_and_on_every_one_when_none_is_named() {
        let p = policy(DefaultPolicy::AllAuthenticated, vec![admin_for_ops()]);
        assert!(matches!(
            p.decide("other", LOCAL, Some(WEB), get("/admin")),
            Decision::Allow(n) if &*n == "default:all-authenticated"
        ));
        let two = config::PolicyRule {
            listeners: vec!["in-a".into(), "in-b".into()],
            ..admin_for_ops()
        };
        let every = config::PolicyRule {
            listeners: Vec::new(),
            path_prefix: Some("/ops".into()),
            ..admin_for_ops()
        };
        let p = policy(DefaultPolicy::AllAuthenticated, vec![two, every]);
        for listener in ["in-a", "in-b"] {
            assert!(matches!(
                p.decide(listener, LOCAL, Some(WEB), get("/admin")),
                Decision::Deny(_)
            ));
        }
        assert!(matches!(
            p.decide("in-c", LOCAL, Some(WEB), get("/admin")),
            Decision::Allow(_)
        ));
        for listener in ["in-a", "in-c"] {
            assert!(matches!(
                p.decide(listener, LOCAL, Some(WEB), get("/ops/x")),
                Decision::Deny(_)
            ));
        }
    }

    #[test]
    fn a_rule_for_a_route_protects_it_and_every_protecting_tier_must_allow() {
        let for_route = |name: &str, ids: &[&str]| config::PolicyRule {
            routes: vec![name.into()],
            ..named(&format!("{name}-callers"), rule(None, ids, &[]))
        };
        let p = policy(
            DefaultPolicy::AllAuthenticated,
            vec![
                for_route("admin-api", &[OPS]),
                for_route("admin-api", &[BILLING]),
                admin_for_ops(),
            ],
        );
        let get = http::Method::GET;
        let d = |id, path, route| p.decide("inbound", LOCAL, Some(id), asked(path, &get, route));
        // Any path on the route is protected by its rules, which add up.
        assert_eq!(
            d(OPS, "/v1", Some("admin-api")),
            Decision::Allow("admin-api-callers".into())
        );
        assert_eq!(
            d(BILLING, "/v1", Some("admin-api")),
            Decision::Allow("admin-api-callers".into())
        );
        assert_eq!(
            d(WEB, "/v1", Some("admin-api")),
            Decision::Deny("protected:route:admin-api".into())
        );
        // Protected by both the route and /admin: billing passes the route, not the prefix.
        assert_eq!(
            d(BILLING, "/admin/x", Some("admin-api")),
            Decision::Deny("protected:/admin".into())
        );
        assert_eq!(
            d(OPS, "/admin/x", Some("admin-api")),
            Decision::Allow("ops-admin".into())
        );
        // Other routes, and requests no route matched, are left to the default.
        assert_eq!(
            d(WEB, "/v1", Some("shop")),
            Decision::Allow("default:all-authenticated".into())
        );
        assert_eq!(
            d(WEB, "/v1", None),
            Decision::Allow("default:all-authenticated".into())
        );
        let both = config::PolicyRule {
            path_prefix: Some("/admin".into()),
            ..for_route("admin-api", &[OPS])
        };
        let err = Policy::new(&config::Policy {
            default: DefaultPolicy::Deny,
            rules: vec![both],
        })
        .unwrap_err();
        assert!(err.contains("policy.rules[0].routes"), "{err}");
    }
}
