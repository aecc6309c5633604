//! The validated config snapshot Rust receives from Python (as JSON).
//!
//! Python (`meshcore.config`) is the one validator and holds the one set of
//! defaults; it sends every field, and its schema is `meshcore.snapshot`.
//! So nothing here has a default: a missing field is an error naming it,
//! which only a script that hand-builds a document can meet. `check` is a
//! guard, not a validator: Python refuses first what it would refuse, so a
//! hand-built document cannot put the data plane in a bad state.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "nullable")]
    pub zone: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub cluster: Option<String>,
    /// Cost overrides keyed by "zone" or "cluster/zone".
    pub costs: BTreeMap<String, u32>,
    #[serde(deserialize_with = "nullable")]
    pub workers: Option<usize>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub services: Vec<Service>,
    #[serde(deserialize_with = "nullable")]
    pub identity: Option<IdentityConfig>,
    pub policy: Policy,
    pub egress: Egress,
    /// Trace context on requests, and where spans go.
    #[serde(deserialize_with = "nullable")]
    pub tracing: Option<TracingConfig>,
}

/// Where a listener's requests are logged, and how.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// "stdout", or an absolute path.
    pub path: String,
    /// Lines waiting for the writer before new ones are dropped.
    pub buffer: usize,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Common,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The chance (0 to 1) that a request without a trace starts one.
    pub sampling: f64,
    /// "host:port" of an OTLP/HTTP collector; None: context only.
    #[serde(deserialize_with = "nullable")]
    pub otlp: Option<String>,
    /// The spans' `service.name`.
    pub service_name: String,
}

/// Traffic a transparent listener passes through (to addresses outside
/// the mesh): the first matching rule decides, else the default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    pub default: EgressAction,
    pub rules: Vec<EgressRule>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub action: EgressAction,
    pub networks: Vec<String>,
    /// Inclusive [first, last] port ranges; empty: every port.
    pub ports: Vec<(u16, u16)>,
}

/// PEM contents (Python reads the files and keeps them fresh).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub trust_anchors_pem: String,
    #[serde(deserialize_with = "nullable")]
    pub cert_pem: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub key_pem: Option<String>,
    /// Accepted client trust domains; empty: this proxy's own.
    pub trust_domains: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Mesh,
    Permissive,
    /// An edge listener: TLS with its own certificate, no client certificate.
    Server,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    Deny,
    Audit,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub default: DefaultPolicy,
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    /// The listeners the rule applies to; empty is every inbound listener.
    pub listeners: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub path_prefix: Option<String>,
    /// The listener routes (by name) the rule protects.
    pub routes: Vec<String>,
    /// Request methods the rule allows (uppercase); empty is any.
    pub methods: Vec<String>,
    pub identities: Vec<String>,
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
    pub protocol: ListenerProtocol,
    /// inbound | outbound; used as the `direction` metric label.
    pub direction: String,
    /// Target for opaque traffic (pinned or detected).
    #[serde(deserialize_with = "nullable")]
    pub service: Option<String>,
    pub detect_timeout_ms: u64,
    /// An HTTP/1.1 client must send a request's headers within this.
    pub header_read_timeout_ms: u64,
    /// An HTTP/2 connection with no open stream is closed after this.
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub tls: TlsMode,
    /// An edge listener's certificate chain and key (PEM); `tls = "server"` only.
    #[serde(deserialize_with = "nullable")]
    pub server_certificate: Option<ServerCertificate>,
    /// Share the port with other processes that ask for sharing too (the
    /// kernel spreads connections between them); off, a port in use is an error.
    pub share_port: bool,
    /// Peers (SPIFFE IDs) trusted to name the original caller in
    /// `meshcore-client-id`: gateways between clusters.
    pub trusted_gateways: Vec<String>,
    /// Takes connections redirected to it (iptables REDIRECT) and serves
    /// each by its original destination.
    pub transparent: bool,
    /// Original destination ports forwarded as TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// Where its requests are logged; None: nowhere.
    #[serde(deserialize_with = "nullable")]
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub listener: String,
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub host: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub path_prefix: Option<String>,
    pub headers: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub timeout_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub response_timeout_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub retry: Option<Retry>,
    #[serde(deserialize_with = "nullable")]
    pub request_headers: Option<HeaderOps>,
    #[serde(deserialize_with = "nullable")]
    pub response_headers: Option<HeaderOps>,
    #[serde(deserialize_with = "nullable")]
    pub rewrite: Option<Rewrite>,
    #[serde(deserialize_with = "nullable")]
    pub redirect: Option<Redirect>,
    #[serde(deserialize_with = "nullable")]
    pub direct_response: Option<DirectResponse>,
    #[serde(deserialize_with = "nullable")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Python plugins apply to this route (Python decides which).
    pub plugins: bool,
    pub backends: Vec<Backend>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
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
    pub status: u16,
    #[serde(deserialize_with = "nullable")]
    pub scheme: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub host: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
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
    pub balancer: BalancerKind,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<Endpoint>,
    /// Virtual addresses (a ClusterIP): a transparent listener sends their
    /// traffic here. An unspecified IP stands for any address on the port.
    pub addresses: Vec<String>,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub zonal: Zonal,
    /// Failure accrual; `None` turns it off.
    #[serde(deserialize_with = "nullable")]
    pub breaker: Option<Breaker>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Zonal {
    pub load_low: f64,
    pub load_high: f64,
    pub dwell_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub min_penalty_ms: u64,
    pub max_penalty_ms: u64,
    pub jitter: f64,
    /// At most this share of a service's endpoints is ejected at once.
    pub max_ejection_percent: u32,
    /// Below this share of available endpoints the balancer uses them all.
    pub panic_threshold_percent: u32,
}

/// The zone label of an endpoint configured without one.
pub const UNKNOWN_ZONE: &str = "unknown";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Conditions: "5xx", "gateway-error", "connect-failure", "reset", or gRPC status names.
    pub on: Vec<String>,
    pub limit: u32,
    pub budget: f64,
    pub min_per_second: u32,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub addr: String,
    #[serde(deserialize_with = "nullable")]
    pub zone: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub cluster: Option<String>,
    /// The upstream proxy's SPIFFE ID: traffic to it is mTLS and verified.
    #[serde(deserialize_with = "nullable")]
    pub identity: Option<String>,
}

/// Reads an `Option` field that must be present, `null` meaning None:
/// serde would otherwise read a missing `Option` as None, a default by
/// another name.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

impl Config {
    /// Parses a whole snapshot; a missing field is an error that names it.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// What the data plane relies on (addresses parse, names resolve). Python
    /// refuses all of it first, with the file and field; this guards hand-built
    /// documents.
    fn check(&self) -> Result<(), String> {
        // A set: a mesh's thousands of routes each name a service.
        let services: std::collections::HashSet<&str> =
            self.services.iter().map(|s| s.name.as_str()).collect();
        let has_service = |name: &str| services.contains(name);
        for (i, l) in self.listeners.iter().enumerate() {
            l.bind
                .parse::<SocketAddr>()
                .map_err(|e| format!("listeners[{i}].bind: {e}"))?;
            if let Some(s) = &l.service {
                if !has_service(s) {
                    return Err(format!("listeners[{i}].service: unknown service {s:?}"));
                }
            }
            if let Some(log) = &l.access_log {
                if log.buffer == 0 {
                    return Err(format!("listeners[{i}].access_log.buffer: must be at least 1"));
                }
                if log.path != "stdout" && !std::path::Path::new(&log.path).is_absolute() {
                    return Err(format!("listeners[{i}].access_log.path: not absolute"));
                }
            }
        }
        if let Some(t) = &self.tracing {
            if !(0.0..=1.0).contains(&t.sampling) {
                return Err("tracing.sampling: must be between 0 and 1".into());
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

/// Complete values for tests and fuzz drivers, which build snapshots by hand
/// instead of through Python: the values Python's defaults send, spelled
/// out. Never compiled into the extension: the data plane has no defaults.
#[cfg(any(test, fuzzing))]
pub mod fixtures {
    use super::*;

    /// No listeners, routes or services; the default policy allows all.
    pub fn config() -> Config {
        Config {
            zone: None,
            cluster: None,
            costs: BTreeMap::new(),
            workers: None,
            listeners: Vec::new(),
            routes: Vec::new(),
            services: Vec::new(),
            identity: None,
            policy: Policy {
                default: DefaultPolicy::AllUnauthenticated,
                rules: Vec::new(),
            },
            egress: Egress {
                default: EgressAction::Allow,
                rules: Vec::new(),
            },
            tracing: None,
        }
    }

    pub fn listener(name: &str, bind: &str) -> Listener {
        Listener {
            name: name.into(),
            bind: bind.into(),
            protocol: ListenerProtocol::Auto,
            direction: "outbound".into(),
            service: None,
            detect_timeout_ms: 10_000,
            header_read_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            max_connections: 10_000,
            tls: TlsMode::None,
            server_certificate: None,
            share_port: false,
            trusted_gateways: Vec::new(),
            transparent: false,
            opaque_ports: Vec::new(),
            access_log: None,
        }
    }

    /// A route on `listener` that matches everything and has no backends yet.
    pub fn route(listener: &str) -> Route {
        Route {
            listener: listener.into(),
            name: None,
            host: None,
            path_prefix: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            response_timeout_ms: None,
            retry: None,
            request_headers: None,
            response_headers: None,
            rewrite: None,
            redirect: None,
            direct_response: None,
            rate_limit: None,
            plugins: false,
            backends: Vec::new(),
        }
    }

    pub fn backend(service: &str) -> Backend {
        Backend {
            service: service.into(),
            weight: 1,
        }
    }

    pub fn header_ops() -> HeaderOps {
        HeaderOps {
            add: BTreeMap::new(),
            set: BTreeMap::new(),
            remove: Vec::new(),
        }
    }

    pub fn redirect() -> Redirect {
        Redirect {
            status: 302,
            scheme: None,
            host: None,
            path: None,
        }
    }

    pub fn direct_response(status: u16) -> DirectResponse {
        DirectResponse {
            status,
            body: String::new(),
            headers: BTreeMap::new(),
        }
    }

    pub fn retry() -> Retry {
        Retry {
            on: vec!["gateway-error".into(), "connect-failure".into()],
            limit: 1,
            budget: 0.2,
            min_per_second: 10,
            ttl_ms: 10_000,
        }
    }

    pub fn service(name: &str, addrs: &[&str]) -> Service {
        Service {
            name: name.into(),
            balancer: BalancerKind::PeakEwma,
            protocol: UpstreamProtocol::Auto,
            endpoints: addrs.iter().map(|a| endpoint(a)).collect(),
            addresses: Vec::new(),
            connect_timeout_ms: 1_000,
            idle_timeout_ms: 90_000,
            zonal: zonal(),
            breaker: Some(breaker()),
        }
    }

    pub fn endpoint(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            zone: None,
            cluster: None,
            identity: None,
        }
    }

    pub fn zonal() -> Zonal {
        Zonal {
            load_low: 0.8,
            load_high: 2.0,
            dwell_ms: 1_000,
        }
    }

    pub fn breaker() -> Breaker {
        Breaker {
            consecutive_failures: 7,
            min_penalty_ms: 1_000,
            max_penalty_ms: 60_000,
            jitter: 0.5,
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::Value;

    /// A snapshot that holds every struct and every optional section once.
    fn everything() -> Config {
        let mut c = config();
        c.listeners = vec![Listener {
            access_log: Some(AccessLogConfig {
                format: AccessLogFormat::Json,
                path: "stdout".into(),
                buffer: 1,
            }),
            ..listener("out", "127.0.0.1:0")
        }];
        c.tracing = Some(TracingConfig {
            sampling: 1.0,
            otlp: Some("127.0.0.1:4318".into()),
            service_name: "meshcore".into(),
        });
        c.services = vec![service("web", &["127.0.0.1:1"])];
        c.routes = vec![
            Route {
                retry: Some(retry()),
                request_headers: Some(header_ops()),
                response_headers: Some(header_ops()),
                rewrite: Some(Rewrite {
                    path_prefix: "/".into(),
                }),
                rate_limit: Some(RateLimitConfig { rps: 1.0, burst: 1 }),
                backends: vec![backend("web")],
                ..route("out")
            },
            Route {
                redirect: Some(redirect()),
                direct_response: Some(direct_response(200)),
                ..route("out")
            },
        ];
        c.identity = Some(IdentityConfig {
            trust_anchors_pem: "anchors".into(),
            cert_pem: Some("cert".into()),
            key_pem: Some("key".into()),
            trust_domains: Vec::new(),
        });
        c.policy.rules = vec![PolicyRule {
            name: None,
            listeners: vec!["out".into()],
            path_prefix: None,
            routes: Vec::new(),
            methods: Vec::new(),
            identities: Vec::new(),
            networks: Vec::new(),
        }];
        c
    }

    fn json(config: &Config) -> Value {
        serde_json::to_value(config).expect("a config serializes")
    }

    #[test]
    fn a_complete_snapshot_parses_back_to_itself() {
        let document = json(&everything());
        let parsed = Config::from_json(&document.to_string()).expect("a complete snapshot");
        assert_eq!(json(&parsed), document);
    }

    /// Every key of every object in `value`, as a path of keys and indexes.
    fn key_paths(value: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    at.push(Value::from(key.as_str()));
                    out.push(at.clone());
                    key_paths(inner, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    at.push(Value::from(i));
                    key_paths(inner, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_missing_field_is_an_error_naming_it() {
        let document = json(&everything());
        let mut paths = Vec::new();
        key_paths(&document, &mut Vec::new(), &mut paths);
        assert!(paths.len() > 80, "{} keys", paths.len());
        for path in paths {
            let (last, parents) = path.split_last().expect("a key");
            let mut without = document.clone();
            let parent = parents.iter().fold(&mut without, |v, step| match step {
                Value::String(key) => &mut v[key.as_str()],
                index => &mut v[index.as_u64().expect("an index") as usize],
            });
            let key = last.as_str().expect("a key");
            parent.as_object_mut().expect("an object").remove(key);
            let err = Config::from_json(&without.to_string()).expect_err(key);
            assert!(err.contains(&format!("missing field `{key}`")), "{path:?}: {err}");
        }
    }

    #[test]
    fn null_is_none_for_an_optional_field() {
        let mut document = json(&everything());
        document["routes"][0]["retry"] = Value::Null;
        let parsed = Config::from_json(&document.to_string()).expect("null retry");
        assert!(parsed.routes[0].retry.is_none());
    }

    #[test]
    fn unknown_service_is_named() {
        let mut c = everything();
        c.routes[0].backends[0].service = "nope".into();
        let err = Config::from_json(&json(&c).to_string()).unwrap_err();
        assert!(err.contains("routes[0].backends[0].service"), "{err}");
    }

    #[test]
    fn bad_bind_is_rejected() {
        let mut c = everything();
        c.listeners[0].bind = "nonsense".into();
        let err = Config::from_json(&json(&c).to_string()).unwrap_err();
        assert!(err.contains("listeners[0].bind"), "{err}");
    }
}
