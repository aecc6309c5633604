//! The validated config snapshot Rust receives from Python (as JSON).
//!
//! Python owns user-facing validation and error messages; this module only
//! re-checks what Rust itself depends on (addresses, cross references), so a
//! hand-built config from a script cannot put the data plane in a bad state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    /// Cost overrides keyed by "zone" or "cluster/zone".
    #[serde(default)]
    pub costs: BTreeMap<String, u32>,
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    #[serde(default)]
    pub policy: Policy,
}

/// PEM contents (Python reads the files and keeps them fresh).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub trust_anchors_pem: String,
    #[serde(default)]
    pub cert_pem: Option<String>,
    #[serde(default)]
    pub key_pem: Option<String>,
    /// Accepted client trust domains; empty: this proxy's own.
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Mesh,
    Permissive,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    Deny,
    Audit,
}

#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default: DefaultPolicy,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default)]
    pub name: Option<String>,
    pub listener: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub networks: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Auto,
    Http1,
    Http2,
    Opaque,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub bind: String,
    #[serde(default = "auto_listener")]
    pub protocol: ListenerProtocol,
    /// inbound | outbound; used as the `direction` metric label.
    #[serde(default = "outbound")]
    pub direction: String,
    /// Target for opaque traffic (pinned or detected).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "detect_timeout_ms")]
    pub detect_timeout_ms: u64,
    /// An HTTP/1.1 client must send a request's headers within this.
    #[serde(default = "header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// An HTTP/2 connection with no open stream is closed after this.
    #[serde(default = "listener_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    #[serde(default = "no_tls")]
    pub tls: TlsMode,
    /// Share the port with other processes that ask for sharing too (the
    /// kernel spreads connections between them); off, a port in use is an error.
    #[serde(default)]
    pub share_port: bool,
}

fn no_tls() -> TlsMode {
    TlsMode::None
}

#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub listener: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub response_timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry: Option<Retry>,
    #[serde(default)]
    pub request_headers: Option<HeaderOps>,
    #[serde(default)]
    pub response_headers: Option<HeaderOps>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Python plugins apply to this route (Python decides which).
    #[serde(default)]
    pub plugins: bool,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    pub add: BTreeMap<String, String>,
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub path_prefix: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default = "found")]
    pub status: u16,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

fn found() -> u16 {
    302
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub rps: f64,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub service: String,
    #[serde(default = "one")]
    pub weight: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    PeakEwma,
    RoundRobin,
    Zonal,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "peak_ewma")]
    pub balancer: BalancerKind,
    #[serde(default = "auto_upstream")]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default = "connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default)]
    pub zonal: Zonal,
    /// Failure accrual; `None` turns it off.
    #[serde(default = "default_breaker")]
    pub breaker: Option<Breaker>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Zonal {
    pub load_low: f64,
    pub load_high: f64,
    pub dwell_ms: u64,
}

impl Default for Zonal {
    fn default() -> Self {
        Zonal {
            load_low: 0.8,
            load_high: 2.0,
            dwell_ms: 1_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub min_penalty_ms: u64,
    pub max_penalty_ms: u64,
    pub jitter: f64,
    /// At most this share of a service's endpoints is ejected at once.
    #[serde(default = "max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Below this share of available endpoints the balancer uses them all.
    #[serde(default = "panic_threshold_percent")]
    pub panic_threshold_percent: u32,
}

/// The zone label of an endpoint configured without one.
pub const UNKNOWN_ZONE: &str = "unknown";

fn max_ejection_percent() -> u32 {
    50
}

fn panic_threshold_percent() -> u32 {
    50
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            consecutive_failures: 7,
            min_penalty_ms: 1_000,
            max_penalty_ms: 60_000,
            jitter: 0.5,
            max_ejection_percent: max_ejection_percent(),
            panic_threshold_percent: panic_threshold_percent(),
        }
    }
}

fn default_breaker() -> Option<Breaker> {
    Some(Breaker::default())
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Conditions: "5xx", "gateway-error", "connect-failure", "reset", or gRPC status names.
    pub on: Vec<String>,
    pub limit: u32,
    pub budget: f64,
    pub min_per_second: u32,
    pub ttl_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            on: vec!["gateway-error".into(), "connect-failure".into()],
            limit: 1,
            budget: 0.2,
            min_per_second: 10,
            ttl_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub addr: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    /// The upstream proxy's SPIFFE ID: traffic to it is mTLS and verified.
    #[serde(default)]
    pub identity: Option<String>,
}

fn auto_listener() -> ListenerProtocol {
    ListenerProtocol::Auto
}
fn auto_upstream() -> UpstreamProtocol {
    UpstreamProtocol::Auto
}
fn outbound() -> String {
    "outbound".to_string()
}
fn peak_ewma() -> BalancerKind {
    BalancerKind::PeakEwma
}
fn one() -> u32 {
    1
}
fn detect_timeout_ms() -> u64 {
    10_000
}
fn header_read_timeout_ms() -> u64 {
    30_000
}
fn listener_idle_timeout_ms() -> u64 {
    300_000
}
fn max_connections() -> usize {
    10_000
}
fn connect_timeout_ms() -> u64 {
    1_000
}
fn idle_timeout_ms() -> u64 {
    90_000
}

impl Config {
    pub fn from_json(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let has_service = |name: &str| self.services.iter().any(|s| s.name == name);
        for (i, l) in self.listeners.iter().enumerate() {
            l.bind
                .parse::<SocketAddr>()
                .map_err(|e| format!("listeners[{i}].bind: {e}"))?;
            if let Some(s) = &l.service {
                if !has_service(s) {
                    return Err(format!("listeners[{i}].service: unknown service {s:?}"));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !self.listeners.iter().any(|l| l.name == r.listener) {
                return Err(format!("routes[{i}].listener: unknown listener {:?}", r.listener));
            }
            let answers_itself = r.redirect.is_some() || r.direct_response.is_some() || r.plugins;
            if r.backends.is_empty() && !answers_itself {
                return Err(format!("routes[{i}].backends: must not be empty"));
            }
            for (j, b) in r.backends.iter().enumerate() {
                if !has_service(&b.service) {
                    return Err(format!(
                        "routes[{i}].backends[{j}].service: unknown service {:?}",
                        b.service
                    ));
                }
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            for (j, e) in s.endpoints.iter().enumerate() {
                e.addr
                    .parse::<SocketAddr>()
                    .map_err(|err| format!("services[{i}].endpoints[{j}].addr: {err}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_json(
            r#"{"listeners":[{"name":"out","bind":"127.0.0.1:0"}],
                "services":[{"name":"web","endpoints":[{"addr":"127.0.0.1:1"}]}],
                "routes":[{"listener":"out","backends":[{"service":"web"}]}]}"#,
        )
        .unwrap();
        assert_eq!(c.listeners[0].protocol, ListenerProtocol::Auto);
        assert_eq!(c.listeners[0].detect_timeout_ms, 10_000);
        assert_eq!(c.services[0].balancer, BalancerKind::PeakEwma);
        assert_eq!(c.routes[0].backends[0].weight, 1);
    }

    #[test]
    fn unknown_service_is_named() {
        let err = Config::from_json(
            r#"{"listeners":[{"name":"out","bind":"127.0.0.1:0"}],
                "routes":[{"listener":"out","backends":[{"service":"nope"}]}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("routes[0].backends[0].service"), "{err}");
    }

    #[test]
    fn bad_bind_is_rejected() {
        let err = Config::from_json(r#"{"listeners":[{"name":"x","bind":"nonsense"}]}"#).unwrap_err();
        assert!(err.contains("listeners[0].bind"), "{err}");
    }
}
