//! HTTP families: `request_total`, `response_total` and the
//! `response_latency_ms` histogram, with Linkerd's names and buckets.
//!
//! A request's series is found in a small per-thread cache (a worker's
//! requests mostly share their labels), so the shared map and its lock are
//! touched only when labels change.

use super::family::{series_with_key, snapshot};
use super::text::{header, histogram, sample, Kind};
use super::{Metrics, RequestLabels, ResponseLabels};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const LATENCY_BUCKETS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000,
    30000, 40000, 50000,
];

#[derive(Default, Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); above the last bound, none.
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

/// One route's (or service's) responses, failures among them, those
/// answered from another zone, and latencies per bucket of
/// `LATENCY_BUCKETS_MS` (not cumulative; slower than the last, none).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct RouteStats {
    pub responses: u64,
    pub failures: u64,
    pub cross_zone: u64,
    pub buckets: [u64; LATENCY_BUCKETS_MS.len()],
}

impl RouteStats {
    fn add(&mut self, labels: &ResponseLabels, series: &ResponseSeries) {
        let n = series.total.load(Relaxed);
        self.responses += n;
        if labels.classification == "failure" {
            self.failures += n;
        }
        if labels.request.cross_zone {
            self.cross_zone += n;
        }
        for (sum, b) in self.buckets.iter_mut().zip(&series.latency.buckets) {
            *sum += b.load(Relaxed);
        }
    }
}

/// Golden numbers since start, by route name and by destination service.
#[derive(Default, Debug)]
pub struct GoldenStats {
    pub routes: Vec<(Arc<str>, RouteStats)>,
    pub services: Vec<(Arc<str>, RouteStats)>,
}

fn entry<'a>(list: &'a mut Vec<(Arc<str>, RouteStats)>, key: &Arc<str>) -> &'a mut RouteStats {
    let i = match list.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            list.push((key.clone(), RouteStats::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

#[derive(Default, Debug)]
pub struct ResponseSeries {
    pub total: AtomicU64,
    pub latency: Histogram,
}

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

/// Per-thread cache entries: (metrics id, labels, series, last response series).
type CachedSeries = (u64, RequestLabels, Arc<RequestSeries>, Option<CachedResponse>);
type CachedResponse = (ResponseKey, Arc<ResponseSeries>);
const CACHE_ENTRIES: usize = 8;

thread_local! {
    static SERIES_CACHE: std::cell::RefCell<Vec<CachedSeries>> = const { std::cell::RefCell::new(Vec::new()) };
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

    /// Golden numbers per route name and per destination service, summed
    /// over their series since start: what the lifecycle's verification
    /// compares before and after a reload, and what `top` and the dashboard
    /// show. Requests that matched no route (or reached no service) are left
    /// out of that list.
    pub fn golden_stats(&self) -> GoldenStats {
        let mut out = GoldenStats::default();
        for (labels, s) in self.response_snapshot() {
            let request = &labels.request;
            if !request.route.is_empty() {
                entry(&mut out.routes, &request.route).add(&labels, &s);
            }
            if !request.dst_service.is_empty() {
                entry(&mut out.services, &request.dst_service).add(&labels, &s);
            }
        }
        out
    }

    pub(super) fn render_http(&self, out: &mut String) {
        header(
            out,
            "request_total",
            Kind::Counter,
            "Total HTTP requests received, by destination.",
        );
        for (l, v) in snapshot(&self.requests) {
            sample(out, "request_total", &l.labels(), v.total.load(Relaxed));
        }
        let responses: Vec<_> = self
            .response_snapshot()
            .into_iter()
            .map(|(l, s)| (l.labels(), s))
            .collect();
        header(
            out,
            "response_total",
            Kind::Counter,
            "Total HTTP responses, by status and classification.",
        );
        for (labels, s) in &responses {
            sample(out, "response_total", labels, s.total.load(Relaxed));
        }
        header(
            out,
            "response_latency_ms",
            Kind::Histogram,
            "Time from request headers to the response's first data frame, in milliseconds.",
        );
        for (labels, s) in &responses {
            // Buckets before the count, as `observe` adds to them in that order.
            let buckets: Vec<_> = (LATENCY_BUCKETS_MS.iter())
                .zip(&s.latency.buckets)
                .map(|(bound, n)| (bound, n.load(Relaxed)))
                .collect();
            let count = s.latency.count.load(Relaxed);
            let sum_ms = s.latency.sum_us.load(Relaxed) as f64 / 1000.0;
            histogram(out, "response_latency_ms", labels, buckets, sum_ms, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Scrape, TlsLabel};

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

    fn render(m: &Metrics) -> String {
        m.render(&Scrape::default())
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
    fn route_stats_sum_a_route_over_its_series() {
        let m = Metrics::default();
        let mut r = labels();
        m.response(&r, 200, None, "success", Duration::from_millis(2));
        m.response(&r, 503, None, "failure", Duration::from_millis(15));
        r.authority = http::HeaderValue::from_static("other.local");
        m.response(&r, 200, None, "success", Duration::from_millis(2));
        r.route = "".into();
        m.response(&r, 404, None, "failure", Duration::from_millis(1));
        let stats = m.golden_stats().routes;
        assert_eq!(stats.len(), 1, "{stats:?}");
        let (route, s) = &stats[0];
        assert_eq!((&**route, s.responses, s.failures), ("api", 3, 1));
        assert_eq!((s.buckets[1], s.buckets[6]), (2, 1), "2 ms twice, 15 ms once");
    }

    #[test]
    fn golden_stats_sum_a_service_over_its_routes_and_count_cross_zone() {
        let m = Metrics::default();
        let mut r = labels();
        m.response(&r, 200, None, "success", Duration::from_millis(2));
        r.route = "other".into();
        r.cross_zone = true;
        m.response(&r, 502, None, "failure", Duration::from_millis(3));
        r.dst_service = "".into();
        m.response(&r, 404, None, "failure", Duration::from_millis(1));
        let stats = m.golden_stats();
        assert_eq!(stats.routes.len(), 2, "{stats:?}");
        assert_eq!(stats.services.len(), 1, "no service, no row: {stats:?}");
        let (service, s) = &stats.services[0];
        assert_eq!(
            (&**service, s.responses, s.failures, s.cross_zone),
            ("web", 2, 1, 1)
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
        let text = render(&m);
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
        assert!(
            text.contains("classification=\"success\"} 100015.5\n"),
            "the sum is in milliseconds: {text}"
        );
    }

    #[test]
    fn counters_are_labelled() {
        let m = Metrics::default();
        m.request(&labels());
        m.request(&labels());
        let text = render(&m);
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
        let (ta, tb) = (render(&a), render(&b));
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
}
