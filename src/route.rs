//! Request matching (host, path prefix, headers; first match wins) and the
//! weighted split across a route's backends.

use crate::filters::Filters;
use crate::resilience::retry::RetryPolicy;
use crate::rng;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
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
    pub retry: Option<Box<RetryPolicy>>,
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
                Some(r) => Some(Box::new(
                    RetryPolicy::new(r).map_err(|e| format!("routes[{index}].retry.on: {e}"))?,
                )),
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
            && self.matches_beyond_host(path, headers)
    }

    /// The path prefix and headers match (the host is matched by `Routes`' index).
    fn matches_beyond_host(&self, path: &str, headers: &HeaderMap) -> bool {
        self.path_prefix.as_deref().is_none_or(|p| path_matches(p, path))
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

    /// Whether the route may send to the service at `index`.
    pub fn sends_to(&self, index: usize) -> bool {
        self.backends.iter().any(|b| b.0 == index)
    }

    /// The route a transparent listener takes to the service at `index` when
    /// none of its own routes goes there: no filters, retries or timeouts.
    pub fn to_service(index: usize, name: &str) -> Route {
        Route {
            name: Arc::from(format!("to-{name}")),
            host: None,
            path_prefix: None,
            headers: Vec::new(),
            timeout: None,
            response_timeout: None,
            retry: None,
            filters: Filters::default(),
            plugins: false,
            backends: vec![(index, 1)],
        }
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

/// A listener's routes, indexed by host so that a request looks at the few
/// routes its host can match instead of scanning them all: exact hosts and
/// wildcard suffixes (`*.example.com` under `example.com`) in maps, and the
/// routes without a host. Each candidate list is in config order; the answer
/// is the lowest route index among the candidates that match, which is the
/// route an in-order scan finds first.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// Lowercase exact host -> route indexes, ascending.
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    /// Lowercase suffix after `*.` -> route indexes, ascending.
    wildcard: HashMap<Box<[u8]>, Vec<u32>>,
    /// Routes without a host, ascending.
    any_host: Vec<u32>,
}

impl Routes {
    pub fn new(routes: Vec<Route>) -> Routes {
        let mut index = Routes::default();
        for (i, r) in routes.iter().enumerate() {
            // A table holds far fewer than 2^32 routes.
            let i = i as u32;
            match r.host.as_deref() {
                None => index.any_host.push(i),
                Some(want) => match want.strip_prefix("*.") {
                    Some(suffix) => index
                        .wildcard
                        .entry(suffix.as_bytes().into())
                        .or_default()
                        .push(i),
                    None => index.exact.entry(want.as_bytes().into()).or_default().push(i),
                },
            }
        }
        index.exact.shrink_to_fit();
        index.wildcard.shrink_to_fit();
        index.routes = routes;
        index
    }

    pub fn as_slice(&self) -> &[Route] {
        &self.routes
    }

    /// The index of the first route, in config order, that matches.
    pub fn find(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<usize> {
        // Hosts are stored lowercase (`Route::new`); most requests' already are.
        let lower: std::borrow::Cow<'_, [u8]> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into_bytes().into()
        } else {
            host.as_bytes().into()
        };
        let mut best: Option<u32> = None;
        let mut consider = |candidates: &[u32]| {
            // The first candidate that matches is this list's lowest; none past `best` can win.
            let found = candidates
                .iter()
                .take_while(|&&i| best.is_none_or(|b| i < b))
                .find(|&&i| self.routes[i as usize].matches_beyond_host(path, headers));
            if let Some(&i) = found {
                best = Some(i);
            }
        };
        if let Some(candidates) = self.exact.get(&*lower) {
            consider(candidates);
        }
        if !self.wildcard.is_empty() {
            // `*.s` matches a host that ends in `.s` with at least one byte before the dot.
            for (dot, _) in lower.iter().enumerate().skip(1).filter(|(_, &b)| b == b'.') {
                if let Some(candidates) = self.wildcard.get(&lower[dot + 1..]) {
                    consider(candidates);
                }
            }
        }
        consider(&self.any_host);
        best.map(|i| i as usize)
    }
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

    fn pick<'a>(choices: &[&'a str]) -> &'a str {
        choices[rng::below(choices.len() as u64) as usize]
    }

    /// The host index answers what an in-order scan answers, on many
    /// generated route sets: exact and wildcard hosts overlapping each other
    /// and host-less routes, in mixed case, with paths and headers that
    /// make some candidates miss.
    #[test]
    fn host_index_agrees_with_the_in_order_scan() {
        let route_hosts = [
            "",
            "a.example",
            "A.Example",
            "b.example",
            "example",
            "*.example",
            "*.EXAMPLE",
            "*.b.example",
            "*.a.b.example",
            "*.",
            "*.x",
            "x",
            "*.*.example",
            "a.b.example",
            "[::1]",
            "127.0.0.1",
        ];
        let request_hosts = [
            "a.example",
            "A.EXAMPLE",
            "b.example",
            "a.b.example",
            "x.a.b.example",
            "example",
            ".example",
            "..example",
            "x.",
            "x..",
            ".",
            "",
            "x",
            "y.x",
            "c.*.example",
            "B.Example",
            "[::1]",
            "127.0.0.1",
            "ab.example",
            "a.bexample",
        ];
        let prefixes = ["", "", "/", "/api", "/api/v1", "/web"];
        let paths = ["/", "/api", "/api/v1/x", "/apix", "/web/a", "/other"];
        let header_values = ["", "", "1", "2"];
        let mut compared = 0;
        for _ in 0..2_000 {
            let count = 1 + rng::below(12) as usize;
            let list: Vec<Route> = (0..count)
                .map(|_| {
                    let host = Some(pick(&route_hosts)).filter(|h| !h.is_empty());
                    let prefix = Some(pick(&prefixes)).filter(|p| !p.is_empty());
                    let canary = pick(&header_values);
                    let headers: Vec<(&str, &str)> = if canary.is_empty() {
                        vec![]
                    } else {
                        vec![("x-canary", canary)]
                    };
                    route(host, prefix, &headers, &[1])
                })
                .collect();
            let scan: Vec<*const Route> = list.iter().map(|r| r as *const Route).collect();
            let index = Routes::new(list);
            for _ in 0..20 {
                let host = pick(&request_hosts);
                let path = pick(&paths);
                let mut headers = HeaderMap::new();
                let canary = pick(&header_values);
                if !canary.is_empty() {
                    headers.insert("x-canary", canary.parse().unwrap());
                }
                let expected = index
                    .as_slice()
                    .iter()
                    .position(|r| r.matches(host, path, &headers));
                let found = index.find(host, path, &headers);
                assert_eq!(
                    found,
                    expected,
                    "{host:?} {path:?} {canary:?} against {:#?}",
                    index.as_slice()
                );
                compared += usize::from(expected.is_some());
            }
            // The routes moved into the index, not copied.
            assert!(scan
                .iter()
                .zip(index.as_slice())
                .all(|(&p, r)| std::ptr::eq(p, r)));
        }
        assert!(
            compared > 5_000,
            "too few requests found a route to compare: {compared}"
        );
    }

    #[test]
    fn the_ten_thousandth_host_is_found_among_its_own_candidates() {
        let list: Vec<Route> = (0..10_000)
            .map(|i| route(Some(&format!("svc-{i}.example")), None, &[], &[1]))
            .collect();
        let index = Routes::new(list);
        let h = HeaderMap::new();
        assert_eq!(index.find("svc-9999.example", "/", &h), Some(9_999));
        assert_eq!(index.find("SVC-0.example", "/", &h), Some(0));
        assert_eq!(index.find("svc-10000.example", "/", &h), None);
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
