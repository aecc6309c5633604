//! Declarative route filters, evaluated in Rust so common cases need no
//! plugin: header edits, path prefix rewrite, redirect, direct response and
//! a local token-bucket rate limit.

use crate::config;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

pub(crate) fn header_pair(field: &str, k: &str, v: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name =
        HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}: invalid header name {k:?}"))?;
    let value = HeaderValue::from_str(v).map_err(|_| format!("{field}.{k}: invalid header value"))?;
    Ok((name, value))
}

impl HeaderOps {
    pub fn new(field: &str, cfg: &config::HeaderOps) -> Result<Self, String> {
        let pairs = |m: &std::collections::BTreeMap<String, String>, what: &str| {
            m.iter()
                .map(|(k, v)| header_pair(&format!("{field}.{what}"), k, v))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(HeaderOps {
            add: pairs(&cfg.add, "add")?,
            set: pairs(&cfg.set, "set")?,
            remove: cfg
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}.remove: invalid {k:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
    }
}

/// A token bucket: `rps` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rps,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rps).min(self.burst);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            Ok(())
        } else {
            *state = (refilled, now);
            Err(Duration::from_secs_f64(
                (1.0 - refilled) / self.rps.max(f64::MIN_POSITIVE),
            ))
        }
    }
}

#[derive(Debug)]
pub struct Redirect {
    pub status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    path: Option<String>,
}

impl Redirect {
    /// The Location for a request to `authority` + `path_and_query`.
    pub fn location(&self, authority: &str, path_and_query: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let host = self.host.as_deref().unwrap_or(authority);
        let path = self.path.as_deref().unwrap_or(path_and_query);
        format!("{scheme}://{host}{path}")
    }
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: bytes::Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Boxed: most routes have none of these, and a mesh holds thousands of routes.
#[derive(Debug, Default)]
pub struct Filters {
    pub request_headers: Option<Box<HeaderOps>>,
    pub response_headers: Option<Box<HeaderOps>>,
    pub rewrite_prefix: Option<Box<str>>,
    pub redirect: Option<Box<Redirect>>,
    pub direct: Option<Box<DirectResponse>>,
    pub rate_limit: Option<Box<RateLimit>>,
}

fn status(field: &str, code: u16) -> Result<StatusCode, String> {
    StatusCode::from_u16(code).map_err(|_| format!("{field}: invalid status {code}"))
}

impl Filters {
    pub fn new(at: &str, cfg: &config::Route) -> Result<Self, String> {
        let redirect = match &cfg.redirect {
            Some(r) => Some(Redirect {
                status: status(&format!("{at}.redirect.status"), r.status)?,
                scheme: r.scheme.clone(),
                host: r.host.clone(),
                path: r.path.clone(),
            }),
            None => None,
        };
        let direct = match &cfg.direct_response {
            Some(d) => Some(DirectResponse {
                status: status(&format!("{at}.direct_response.status"), d.status)?,
                body: bytes::Bytes::from(d.body.clone()),
                headers: d
                    .headers
                    .iter()
                    .map(|(k, v)| header_pair(&format!("{at}.direct_response.headers"), k, v))
                    .collect::<Result<_, _>>()?,
            }),
            None => None,
        };
        Ok(Filters {
            request_headers: cfg
                .request_headers
                .as_ref()
                .map(|h| HeaderOps::new(&format!("{at}.request_headers"), h).map(Box::new))
                .transpose()?,
            response_headers: cfg
                .response_headers
                .as_ref()
                .map(|h| HeaderOps::new(&format!("{at}.response_headers"), h).map(Box::new))
                .transpose()?,
            rewrite_prefix: cfg.rewrite.as_ref().map(|r| r.path_prefix.as_str().into()),
            redirect: redirect.map(Box::new),
            direct: direct.map(Box::new),
            rate_limit: (cfg.rate_limit.as_ref()).map(|r| Box::new(RateLimit::new(r.rps, r.burst))),
        })
    }
}

/// Replaces the matched `prefix` of `path` with `replacement` (query kept).
pub fn rewrite_prefix(path_and_query: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = path_and_query.strip_prefix(prefix).unwrap_or(path_and_query);
    let replacement = replacement.trim_end_matches('/');
    match (replacement.is_empty(), rest.is_empty() || rest.starts_with('?')) {
        (true, true) => format!("/{rest}"),
        (true, false) => rest.to_string(),
        (false, _) => format!("{replacement}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let rl = RateLimit::new(10.0, 3);
        assert!((0..3).all(|_| rl.try_acquire(t0).is_ok()));
        let wait = rl.try_acquire(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(rl.try_acquire(t0 + Duration::from_millis(100)).is_ok());
        assert!(rl.try_acquire(t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| rl.try_acquire(later).is_ok()).count(), 3);
    }

    #[test]
    fn prefix_rewrites() {
        assert_eq!(
            rewrite_prefix("/api/v1/users?x=1", "/api", "/internal"),
            "/internal/v1/users?x=1"
        );
        assert_eq!(rewrite_prefix("/api", "/api", "/"), "/");
        assert_eq!(rewrite_prefix("/api/x", "/api/", "/"), "/x");
        assert_eq!(rewrite_prefix("/api?q", "/api", ""), "/?q");
    }

    #[test]
    fn header_ops_order_is_remove_set_add() {
        let ops = HeaderOps::new(
            "h",
            &config::HeaderOps {
                add: [("x-a".to_string(), "2".to_string())].into(),
                set: [("x-b".to_string(), "new".to_string())].into(),
                remove: vec!["x-c".to_string()],
            },
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "old".parse().unwrap());
        h.insert("x-c", "gone".parse().unwrap());
        ops.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["x-b"], "new");
        assert!(h.get("x-c").is_none());
    }

    #[test]
    fn redirect_location_keeps_what_is_not_replaced() {
        let r = Redirect {
            status: StatusCode::FOUND,
            scheme: Some("https".into()),
            host: None,
            path: None,
        };
        assert_eq!(r.location("web.local", "/a?b"), "https://web.local/a?b");
    }
}
