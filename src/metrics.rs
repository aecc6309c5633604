//! Counters and histograms with Linkerd's names, rendered as Prometheus text.
//!
//! Series are updated with relaxed atomics. A request's series is found in a
//! small per-thread cache (a worker's requests mostly share their labels), so
//! the shared map and its lock are touched only when labels change; rendering
//! takes a snapshot without blocking traffic.

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const LATENCY_BUCKETS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000,
    30000, 40000, 50000,
];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub direction: Arc<str>,
    pub authority: http::HeaderValue,
    pub dst_service: Arc<str>,
    pub dst_zone: Arc<str>,
    pub cross_zone: bool,
    pub tls: TlsLabel,
    /// The route's name; empty before one is found.
    pub route: Arc<str>,
}

impl RequestLabels {
    /// The same labels, holding no part of a message they were taken from.
    fn detached(&self) -> Self {
        let authority = http::HeaderValue::from_bytes(self.authority.as_bytes())
            .expect("a header value's bytes are a valid header value");
        RequestLabels {
            authority,
            ..self.clone()
        }
    }
}

/// The `tls` label, as Linkerd spells it; one byte in every request's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsLabel {
    /// mTLS with a client identity.
    True,
    NoIdentity,
    False,
}

impl TlsLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLabel::True => "true",
            TlsLabel::NoIdentity => "no_identity",
            TlsLabel::False => "false",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthzLabels {
    pub listener: Arc<str>,
    pub rule: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub direction: Arc<str>,
    pub route: Arc<str>,
    pub dst_service: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    pub request: RequestLabels,
    pub status_code: u16,
    /// A gRPC response's `grpc-status`; the label is left out for others.
    pub grpc_status: Option<u32>,
    pub classification: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub direction: Arc<str>,
    pub listener: Arc<str>,
}

#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b as f64) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(latency.as_micros() as u64, Relaxed);
    }
}

#[derive(Default, Debug)]
pub struct ResponseSeries {
    pub total: AtomicU64,
    pub latency: Histogram,
}

#[derive(Default, Debug)]
pub struct TcpSeries {
    pub open_total: AtomicU64,
    pub close_total: AtomicU64,
    pub open: AtomicI64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// By `ConnEvent`, rendered as `tcp_errors_total{error=...}`.
    events: [AtomicU64; ConnEvent::ALL.len()],
}

/// Why a connection was refused or cut off. Every such event is counted
/// here; the log line about it is rate-limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Over `max_connections` with no idle connection to close.
    Refused,
    /// An idle connection closed to make room (or descriptors ran out).
    Evicted,
    /// accept() failed for lack of file descriptors.
    AcceptExhausted,
    TlsHandshakeFailed,
    /// The client's certificate is not one the mesh accepts.
    TlsIdentityRefused,
    /// Plaintext on a `tls = "mesh"` listener.
    PlaintextRefused,
    /// No HTTP/2 preface and SETTINGS within the header read timeout.
    PrefaceTimeout,
    /// An HTTP/2 connection error (GOAWAY with an error code).
    Http2Protocol,
    /// An HTTP/2 client cut off for abuse (GOAWAY ENHANCE_YOUR_CALM).
    Http2Abuse,
    /// A request head hyper could not parse (answered 400 or 431).
    Http1Malformed,
    /// A request head not finished within the header read timeout (slowloris).
    Http1HeaderTimeout,
}

impl ConnEvent {
    const ALL: [ConnEvent; 11] = [
        ConnEvent::Refused,
        ConnEvent::Evicted,
        ConnEvent::AcceptExhausted,
        ConnEvent::TlsHandshakeFailed,
        ConnEvent::TlsIdentityRefused,
        ConnEvent::PlaintextRefused,
        ConnEvent::PrefaceTimeout,
        ConnEvent::Http2Protocol,
        ConnEvent::Http2Abuse,
        ConnEvent::Http1Malformed,
        ConnEvent::Http1HeaderTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnEvent::Refused => "max_connections_refused",
            ConnEvent::Evicted => "max_connections_evicted",
            ConnEvent::AcceptExhausted => "accept_no_descriptors",
            ConnEvent::TlsHandshakeFailed => "tls_handshake_failed",
            ConnEvent::TlsIdentityRefused => "tls_identity_refused",
            ConnEvent::PlaintextRefused => "tls_plaintext_refused",
            ConnEvent::PrefaceTimeout => "http2_preface_timeout",
            ConnEvent::Http2Protocol => "http2_protocol_error",
            ConnEvent::Http2Abuse => "http2_enhance_your_calm",
            ConnEvent::Http1Malformed => "http1_malformed",
            ConnEvent::Http1HeaderTimeout => "http1_header_timeout",
        }
    }
}

impl TcpSeries {
    pub fn count(&self, event: ConnEvent) {
        self.events[event as usize].fetch_add(1, Relaxed);
    }

    pub fn events(&self, event: ConnEvent) -> u64 {
        self.events[event as usize].load(Relaxed)
    }
}

type Family<K, V> = Mutex<HashMap<K, Arc<V>>>;

/// Everything recorded under one set of request labels.
#[derive(Default, Debug)]
pub struct RequestSeries {
    total: AtomicU64,
    /// Responses by outcome.
    responses: Mutex<Vec<(ResponseKey, Arc<ResponseSeries>)>>,
}

/// What tells a request's responses apart: status, gRPC status, classification.
type ResponseKey = (u16, Option<u32>, &'static str);

impl RequestSeries {
    fn response(&self, key: ResponseKey) -> Arc<ResponseSeries> {
        let mut set = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = set.iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let s = Arc::new(ResponseSeries::default());
        set.push((key, s.clone()));
        s
    }
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

/// Per-thread cache entries: (metrics id, labels, series, last response series).
type CachedSeries = (u64, RequestLabels, Arc<RequestSeries>, Option<CachedResponse>);
type CachedResponse = (ResponseKey, Arc<ResponseSeries>);
const CACHE_ENTRIES: usize = 8;

thread_local! {
    static SERIES_CACHE: std::cell::RefCell<Vec<CachedSeries>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's entries apart in the per-thread caches.
    id: u64,
    requests: Family<RequestLabels, RequestSeries>,
    tcp: Family<TcpLabels, TcpSeries>,
    retries: Family<RouteLabels, AtomicU64>,
    authz_allow: Family<AuthzLabels, AtomicU64>,
    authz_deny: Family<AuthzLabels, AtomicU64>,
    budget_exhausted: Family<RouteLabels, AtomicU64>,
}

fn series<K: Hash + Eq + Clone, V: Default>(family: &Family<K, V>, key: &K) -> Arc<V> {
    series_with_key(family, key, K::clone).1
}

/// The series for `key` and the map's own copy of the key. A new key is
/// stored as `own(key)`, so that a key borrowing a request's memory is not kept.
fn series_with_key<K: Hash + Eq + Clone, V: Default>(
    family: &Family<K, V>,
    key: &K,
    own: impl FnOnce(&K) -> K,
) -> (K, Arc<V>) {
    let mut map = family.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((stored, v)) = map.get_key_value(key) {
        return (stored.clone(), v.clone());
    }
    let stored = own(key);
    let v = Arc::<V>::default();
    map.insert(stored.clone(), v.clone());
    (stored, v)
}

fn snapshot<K: Clone, V>(family: &Family<K, V>) -> Vec<(K, Arc<V>)> {
    let map = family.lock().unwrap_or_else(|p| p.into_inner());
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            id: NEXT_METRICS_ID.fetch_add(1, Relaxed),
            requests: Family::default(),
            tcp: Family::default(),
            retries: Family::default(),
            authz_allow: Family::default(),
            authz_deny: Family::default(),
            budget_exhausted: Family::default(),
        }
    }
}

impl Metrics {
    /// Runs `f` on this thread's cache entry for `labels`, filling it from
    /// the shared map on a miss.
    fn with_cached<T>(&self, labels: &RequestLabels, f: impl FnOnce(&mut CachedSeries) -> T) -> T {
        SERIES_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let hit = cache
                .iter()
                .position(|(id, l, _, _)| *id == self.id && l == labels);
            let i = match hit {
                Some(i) => i,
                None => {
                    if cache.len() == CACHE_ENTRIES {
                        cache.remove(0);
                    }
                    // Kept for as long as the proxy runs: a new series' authority
                    // gets a copy of its own, not a slice of the request's head.
                    let (owned, series) = series_with_key(&self.requests, labels, RequestLabels::detached);
                    cache.push((self.id, owned, series, None));
                    cache.len() - 1
                }
            };
            f(&mut cache[i])
        })
    }

    pub fn request(&self, labels: &RequestLabels) {
        self.with_cached(labels, |(_, _, series, _)| series.total.fetch_add(1, Relaxed));
    }

    pub fn response(
        &self,
        request: &RequestLabels,
        status: u16,
        grpc_status: Option<u32>,
        classification: &'static str,
        latency: Duration,
    ) {
        let key = (status, grpc_status, classification);
        self.with_cached(request, |(_, _, series, last)| {
            let s = match last {
                Some((k, s)) if *k == key => s,
                _ => &mut last.insert((key, series.response(key))).1,
            };
            s.total.fetch_add(1, Relaxed);
            s.latency.observe(latency);
        });
    }

    fn response_snapshot(&self) -> Vec<(ResponseLabels, Arc<ResponseSeries>)> {
        let mut out = Vec::new();
        for (request, series) in snapshot(&self.requests) {
            let set = series.responses.lock().unwrap_or_else(|p| p.into_inner());
            for &((status_code, grpc_status, classification), ref s) in set.iter() {
                let labels = ResponseLabels {
                    request: request.clone(),
                    status_code,
                    grpc_status,
                    classification,
                };
                out.push((labels, s.clone()));
            }
        }
        out
    }

    pub fn tcp(&self, labels: &TcpLabels) -> Arc<TcpSeries> {
        series(&self.tcp, labels)
    }

    pub fn authorization(&self, listener: &Arc<str>, decision: &crate::policy::Decision) {
        use crate::policy::Decision;
        let (family, rule) = match decision {
            Decision::Allow(rule) => (&self.authz_allow, rule.clone()),
            Decision::Audit => (&self.authz_allow, Arc::from("default:audit")),
            Decision::Deny(rule) => (&self.authz_deny, rule.clone()),
        };
        let labels = AuthzLabels {
            listener: listener.clone(),
            rule,
        };
        series(family, &labels).fetch_add(1, Relaxed);
    }

    pub fn retry(&self, labels: &RouteLabels) {
        series(&self.retries, labels).fetch_add(1, Relaxed);
    }

    pub fn retry_budget_exhausted(&self, labels: &RouteLabels) {
        series(&self.budget_exhausted, labels).fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_http(&mut out);
        self.render_tcp(&mut out);
        self.render_retries(&mut out);
        self.render_authz(&mut out);
        out
    }

    fn render_authz(&self, out: &mut String) {
        let families = [
            (
                "inbound_http_authz_allow_total",
                "Inbound requests and connections allowed.",
                &self.authz_allow,
            ),
            (
                "inbound_http_authz_deny_total",
                "Inbound requests and connections denied.",
                &self.authz_deny,
            ),
        ];
        for (name, help, family) in families {
            header(out, name, "counter", help);
            for (l, v) in snapshot(family) {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",rule=\"{}\"}} {}",
                    escape(&l.listener),
                    escape(&l.rule),
                    v.load(Relaxed)
                );
            }
        }
    }

    fn render_retries(&self, out: &mut String) {
        let families = [
            ("retry_total", "Requests retried.", &self.retries),
            (
                "retry_budget_exhausted_total",
                "Retries refused by the retry budget.",
                &self.budget_exhausted,
            ),
        ];
        for (name, help, family) in families {
            header(out, name, "counter", help);
            for (l, v) in snapshot(family) {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",route=\"{}\",dst_service=\"{}\"}} {}",
                    escape(&l.direction),
                    escape(&l.route),
                    escape(&l.dst_service),
                    v.load(Relaxed)
                );
            }
        }
    }

    fn render_http(&self, out: &mut String) {
        header(
            out,
            "request_total",
            "counter",
            "Total HTTP requests received, by destination.",
        );
        for (l, v) in snapshot(&self.requests) {
            let _ = writeln!(
                out,
                "request_total{{{}}} {}",
                request_labels(&l),
                v.total.load(Relaxed)
            );
        }
        let responses = self.response_snapshot();
        header(
            out,
            "response_total",
            "counter",
            "Total HTTP responses, by status and classification.",
        );
        for (l, s) in &responses {
            let _ = writeln!(
                out,
                "response_total{{{}}} {}",
                response_labels(l),
                s.total.load(Relaxed)
            );
        }
        header(
            out,
            "response_latency_ms",
            "histogram",
            "Time from request headers to the response's first data frame, in milliseconds.",
        );
        for (l, s) in &responses {
            let labels = response_labels(l);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                cumulative += s.latency.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "response_latency_ms_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = s.latency.count.load(Relaxed);
            let sum_ms = s.latency.sum_us.load(Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "response_latency_ms_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "response_latency_ms_sum{{{labels}}} {sum_ms}");
            let _ = writeln!(out, "response_latency_ms_count{{{labels}}} {count}");
        }
    }

    fn render_tcp(&self, out: &mut String) {
        let tcp = snapshot(&self.tcp);
        type Field = fn(&TcpSeries) -> i64;
        let families: [(&str, &str, &str, Field); 5] = [
            ("tcp_open_total", "counter", "Connections accepted.", |s| {
                s.open_total.load(Relaxed) as i64
            }),
            ("tcp_close_total", "counter", "Connections closed.", |s| {
                s.close_total.load(Relaxed) as i64
            }),
            (
                "tcp_open_connections",
                "gauge",
                "Connections currently open.",
                |s| s.open.load(Relaxed),
            ),
            (
                "tcp_read_bytes_total",
                "counter",
                "Bytes read from clients.",
                |s| s.read_bytes.load(Relaxed) as i64,
            ),
            (
                "tcp_write_bytes_total",
                "counter",
                "Bytes written to clients.",
                |s| s.write_bytes.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, field) in families {
            header(out, name, kind, help);
            for (l, s) in &tcp {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",listener=\"{}\"}} {}",
                    escape(&l.direction),
                    escape(&l.listener),
                    field(s)
                );
            }
        }
        header(
            out,
            "tcp_errors_total",
            "counter",
            "Connections refused or cut off, by reason.",
        );
        for (l, s) in &tcp {
            for event in ConnEvent::ALL {
                let n = s.events(event);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tcp_errors_total{{direction=\"{}\",listener=\"{}\",error=\"{}\"}} {n}",
                        escape(&l.direction),
                        escape(&l.listener),
                        event.label()
                    );
                }
            }
        }
    }
}

/// The workload certificate's gauges (no labels).
pub fn render_identity(out: &mut String, not_after: i64, refreshes: u64) {
    header(
        out,
        "identity_cert_expiration_timestamp_seconds",
        "gauge",
        "When the workload certificate in use expires.",
    );
    let _ = writeln!(out, "identity_cert_expiration_timestamp_seconds {not_after}");
    header(
        out,
        "identity_cert_refresh_total",
        "counter",
        "Workload certificates installed.",
    );
    let _ = writeln!(out, "identity_cert_refresh_total {refreshes}");
}

/// A family's HELP and TYPE lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample, its label values escaped: for families rendered outside this
/// module (the balancer's, from the routing table), so that every label
/// value is escaped by the same rule.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    out.push('{');
    for (i, (key, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"{}\"", escape(v));
    }
    let _ = writeln!(out, "}} {value}");
}

fn request_labels(l: &RequestLabels) -> String {
    format!(
        "direction=\"{}\",authority=\"{}\",tls=\"{}\",dst_service=\"{}\",dst_zone=\"{}\",cross_zone=\"{}\",route=\"{}\"",
        escape(&l.direction),
        escape(l.authority.to_str().unwrap_or_default()),
        l.tls.as_str(),
        escape(&l.dst_service),
        escape(&l.dst_zone),
        l.cross_zone,
        escape(&l.route)
    )
}

fn response_labels(l: &ResponseLabels) -> String {
    let grpc = l
        .grpc_status
        .map(|g| format!(",grpc_status=\"{g}\""))
        .unwrap_or_default();
    format!(
        "{},status_code=\"{}\"{grpc},classification=\"{}\"",
        request_labels(&l.request),
        l.status_code,
        l.classification
    )
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RequestLabels {
        RequestLabels {
            direction: "outbound".into(),
            authority: http::HeaderValue::from_static("web.local"),
            dst_service: "web".into(),
            dst_zone: "zone-a".into(),
            cross_zone: false,
            tls: TlsLabel::False,
            route: "api".into(),
        }
    }

    #[test]
    fn series_labels_hold_no_part_of_the_request_they_came_from() {
        let m = Metrics::default();
        let head = bytes::Bytes::from(b"GET / HTTP/1.1\r\nhost: web.local\r\n\r\n".to_vec());
        let mut l = labels();
        l.authority = http::HeaderValue::from_maybe_shared(head.slice(22..31)).unwrap();
        m.request(&l);
        let keys: Vec<_> = m.requests.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, [l.clone()]);
        let within = head
            .as_ptr_range()
            .contains(&keys[0].authority.as_bytes().as_ptr());
        assert!(!within, "the series key points into the request's head");
        // Nor does this thread's cache, which holds the map's own key.
        let cached = SERIES_CACHE.with(|c| c.borrow().iter().find(|e| e.0 == m.id).map(|e| e.1.clone()));
        let cached = cached.expect("the series is cached");
        assert_eq!(
            cached.authority.as_bytes().as_ptr(),
            keys[0].authority.as_bytes().as_ptr()
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        let r = labels();
        m.response(&r, 200, None, "success", Duration::from_micros(500));
        m.response(&r, 200, None, "success", Duration::from_millis(15));
        m.response(&r, 200, None, "success", Duration::from_secs(100));
        m.response(&r, 503, None, "failure", Duration::from_millis(2));
        m.response(&r, 200, Some(14), "failure", Duration::from_millis(2));
        let text = m.render();
        assert!(
            text.contains("status_code=\"200\",grpc_status=\"14\",classification=\"failure\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("status_code=\"503\",classification=\"failure\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("le=\"10\"} 1\n"));
        assert!(text.contains("le=\"20\"} 2\n"));
        assert!(text.contains("le=\"50000\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains("response_latency_ms_count{"));
    }

    #[test]
    fn samples_escape_their_label_values() {
        let mut out = String::new();
        sample(&mut out, "x", &[("dst_service", "we\"b\\\n"), ("state", "a")], 1);
        assert_eq!(out, "x{dst_service=\"we\\\"b\\\\\\n\",state=\"a\"} 1\n");
    }

    #[test]
    fn counters_are_labelled() {
        let m = Metrics::default();
        m.request(&labels());
        m.request(&labels());
        let text = m.render();
        assert!(text.contains(
            "request_total{direction=\"outbound\",authority=\"web.local\",tls=\"false\",dst_service=\"web\",dst_zone=\"zone-a\",cross_zone=\"false\",route=\"api\"} 2"
        ));
    }

    #[test]
    fn cached_series_belong_to_their_own_instance_and_labels() {
        // The per-thread cache must not mix up two proxies, or two label sets.
        let (a, b) = (Metrics::default(), Metrics::default());
        let mut other = labels();
        other.dst_zone = "zone-b".into();
        for _ in 0..3 {
            a.request(&labels());
            a.response(&labels(), 200, None, "success", Duration::from_millis(1));
        }
        b.request(&labels());
        b.response(&labels(), 503, None, "failure", Duration::from_millis(1));
        a.request(&other);
        // More label sets than the cache holds: evicted entries are found again.
        for i in 0..(2 * CACHE_ENTRIES) {
            let mut l = labels();
            l.authority = http::HeaderValue::from_str(&format!("host{i}")).unwrap();
            a.request(&l);
        }
        a.request(&labels());
        let (ta, tb) = (a.render(), b.render());
        assert!(
            ta.contains("dst_zone=\"zone-a\",cross_zone=\"false\",route=\"api\"} 4\n"),
            "{ta}"
        );
        assert!(
            ta.contains("dst_zone=\"zone-b\",cross_zone=\"false\",route=\"api\"} 1\n"),
            "{ta}"
        );
        assert!(ta.contains("authority=\"host15\""), "{ta}");
        assert!(
            ta.contains("status_code=\"200\",classification=\"success\"} 3\n"),
            "{ta}"
        );
        assert!(!ta.contains("status_code=\"503\""), "{ta}");
        assert!(
            tb.contains("dst_zone=\"zone-a\",cross_zone=\"false\",route=\"api\"} 1\n"),
            "{tb}"
        );
        assert!(
            tb.contains("status_code=\"503\",classification=\"failure\"} 1\n"),
            "{tb}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
