//! Request matching (host, path prefix, headers; first match wins) and the
//! weighted split across a route's backends.

use crate::filters::Filters;
use crate::resilience::retry::RetryPolicy;
use crate::rng;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    host: Option<String>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Whole request: response headers and body.
    pub timeout: Option<Duration>,
    /// Per attempt: until response headers.
    pub response_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub filters: Filters,
    /// Python plugins apply to this route.
    pub plugins: bool,
    /// (service index, cumulative weight)
    backends: Vec<(usize, u64)>,
}

impl Route {
    /// `service_index` resolves a backend's service name; config validation
    /// guarantees it exists.
    pub fn new(
        index: usize,
        cfg: &crate::config::Route,
        service_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<Route, String> {
        let field = format!("routes[{index}].headers");
        let headers = (cfg.headers.iter())
            .map(|(k, v)| crate::filters::header_pair(&field, k, v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut total = 0u64;
        let mut backends = Vec::new();
        for (j, b) in cfg.backends.iter().enumerate() {
            let svc = service_index(&b.service).ok_or_else(|| {
                format!(
                    "routes[{index}].backends[{j}].service: unknown service {:?}",
                    b.service
                )
            })?;
            total += u64::from(b.weight);
            backends.push((svc, total));
        }
        Ok(Route {
            name: Arc::from(cfg.name.clone().unwrap_or_else(|| format!("route-{index}"))),
            host: cfg.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path_prefix: cfg.path_prefix.clone(),
            headers,
            timeout: cfg.timeout_ms.map(Duration::from_millis),
            response_timeout: cfg.response_timeout_ms.map(Duration::from_millis),
            retry: match &cfg.retry {
                Some(r) => Some(RetryPolicy::new(r).map_err(|e| format!("routes[{index}].retry.on: {e}"))?),
                None => None,
            },
            filters: Filters::new(&format!("routes[{index}]"), cfg)?,
            plugins: cfg.plugins,
            backends,
        })
    }

    /// `host` is the request's authority without its port.
    pub fn matches(&self, host: &str, path: &str, headers: &HeaderMap) -> bool {
        self.host.as_deref().is_none_or(|want| host_matches(want, host))
            && self.path_prefix.as_deref().is_none_or(|p| path_matches(p, path))
            && self
                .headers
                .iter()
                .all(|(k, v)| headers.get_all(k).iter().any(|have| have == v))
    }

    /// Picks a backend service by weight.
    /// Picks a backend service by weight; None for a route without backends
    /// (one that answers itself, or whose plugin chooses).
    pub fn pick_service(&self) -> Option<usize> {
        let total = self.backends.last().map_or(0, |b| b.1);
        if total == 0 {
            return self.backends.first().map(|b| b.0);
        }
        let ticket = rng::below(total);
        self.backends
            .iter()
            .find(|(_, cumulative)| ticket < *cumulative)
            .map(|b| b.0)
    }

    pub fn path_prefix(&self) -> &str {
        self.path_prefix.as_deref().unwrap_or("/")
    }
}

/// Exact match, or `*.example.com` for any subdomain; case-insensitive.
fn host_matches(want: &str, host: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => want.eq_ignore_ascii_case(host),
    }
}

/// Prefixes match whole path segments: "/api" matches "/api" and "/api/x",
/// not "/apix" (as in Gateway API's PathPrefix). Routes and policy rules share it.
pub(crate) fn path_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// First route that matches, in config order.
pub fn find<'a>(routes: &'a [Route], host: &str, path: &str, headers: &HeaderMap) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(host, path, headers))
}

/// Strips the port from an authority ("web.local:80" -> "web.local", "[::1]:80" -> "[::1]").
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::collections::BTreeMap;

    fn route(host: Option<&str>, prefix: Option<&str>, headers: &[(&str, &str)], weights: &[u32]) -> Route {
        let cfg = config::Route {
            host: host.map(String::from),
            path_prefix: prefix.map(String::from),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| config::Backend {
                    service: format!("s{i}"),
                    weight: *w,
                })
                .collect(),
            ..config::fixtures::route("l")
        };
        Route::new(0, &cfg, |name| name[1..].parse().ok()).unwrap()
    }

    #[test]
    fn path_prefix_matches_segments() {
        let r = route(None, Some("/api"), &[], &[1]);
        let h = HeaderMap::new();
        assert!(r.matches("x", "/api", &h));
        assert!(r.matches("x", "/api/v1", &h));
        assert!(!r.matches("x", "/apix", &h));
        assert!(route(None, Some("/"), &[], &[1]).matches("x", "/anything", &h));
    }

    #[test]
    fn host_matching_is_case_insensitive_with_wildcards() {
        let h = HeaderMap::new();
        assert!(route(Some("Web.Local"), None, &[], &[1]).matches("web.local", "/", &h));
        let wild = route(Some("*.mesh.local"), None, &[], &[1]);
        assert!(wild.matches("api.mesh.local", "/", &h));
        assert!(!wild.matches("mesh.local", "/", &h));
        assert!(!wild.matches("apimesh.local", "/", &h));
    }

    #[test]
    fn all_headers_must_match() {
        let r = route(None, None, &[("x-canary", "1"), ("x-team", "a")], &[1]);
        let mut h = HeaderMap::new();
        h.insert("x-canary", "1".parse().unwrap());
        assert!(!r.matches("x", "/", &h));
        h.insert("x-team", "a".parse().unwrap());
        assert!(r.matches("x", "/", &h));
    }

    #[test]
    fn first_match_wins() {
        let routes = vec![
            route(None, Some("/a"), &[], &[1]),
            route(None, None, &[], &[0, 1]),
        ];
        let h = HeaderMap::new();
        assert_eq!(find(&routes, "x", "/a/b", &h).unwrap().pick_service(), Some(0));
        assert_eq!(find(&routes, "x", "/b", &h).unwrap().pick_service(), Some(1));
    }

    #[test]
    fn weighted_split_follows_weights() {
        let r = route(None, None, &[], &[90, 10]);
        let canary = (0..20_000).filter(|_| r.pick_service() == Some(1)).count();
        assert!((1_600..2_400).contains(&canary), "{canary}");
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(host_of("web.local:8080"), "web.local");
        assert_eq!(host_of("web.local"), "web.local");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }
}
