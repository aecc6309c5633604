//! Loops over the hot-path pieces so pytest-benchmark can time them without
//! paying a Python call per operation. Each returns a checksum so the work
//! cannot be optimised away.

use crate::balance::{simulate_request, Balancer, Endpoint};
use crate::config::{self, BalancerKind};
use crate::message::headers::strip_hop_by_hop;
use crate::metrics::{Metrics, RequestLabels, Scrape};
use crate::route::{self, Route};
use http::HeaderMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn balancer_pick(kind: BalancerKind, endpoints: usize, iterations: usize) -> u64 {
    let eps = (0..endpoints)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", 20_000 + i).parse().expect("valid addr");
            Arc::new(Endpoint::new(addr, Some("zone-a")))
        })
        .collect();
    // The kinds benchmarked here have no tiers, so no zonal band to read.
    let unread = config::Zonal {
        load_low: 0.0,
        load_high: 1.0,
        dwell_ms: 0,
    };
    let balancer = Balancer::with_zonal(kind, eps, unread);
    let now = Instant::now();
    let mut sum = 0u64;
    for i in 0..iterations {
        if let Ok(picked) = balancer.pick() {
            sum += picked as u64;
            if i % 16 == 0 {
                simulate_request(
                    &balancer.endpoints()[picked],
                    now,
                    Duration::from_millis(1 + picked as u64),
                );
            }
        }
    }
    sum
}

pub fn route_match(routes: usize, iterations: usize) -> u64 {
    let table: Vec<Route> = (0..routes)
        .map(|i| {
            // Every field spelled out: the config has no defaults in Rust.
            let cfg = config::Route {
                listener: "l".into(),
                name: None,
                host: Some(format!("svc-{i}.mesh.local")),
                path_prefix: Some(format!("/api/v{i}")),
                headers: Default::default(),
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
                backends: vec![config::Backend {
                    service: "s".into(),
                    weight: 1,
                }],
            };
            Route::new(i, &cfg, |_| Some(0)).expect("valid route")
        })
        .collect();
    let headers = HeaderMap::new();
    let host = format!("svc-{}.mesh.local", routes.saturating_sub(1));
    let path = format!("/api/v{}/users/42", routes.saturating_sub(1));
    let mut found = 0u64;
    for _ in 0..iterations {
        if route::find(&table, &host, &path, &headers).is_some() {
            found += 1;
        }
    }
    found
}

pub fn header_rewrite(iterations: usize) -> u64 {
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "web.local"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("x-request-id", "3f2a9c"),
        ("te", "trailers"),
        ("content-type", "application/json"),
    ] {
        template.insert(k, v.parse().expect("valid header"));
    }
    let mut kept = 0u64;
    for _ in 0..iterations {
        let mut h = template.clone();
        strip_hop_by_hop(&mut h, false);
        kept += h.len() as u64;
    }
    kept
}

pub fn metrics_record(iterations: usize) -> u64 {
    let metrics = Metrics::default();
    let labels = RequestLabels {
        direction: Arc::from("outbound"),
        authority: http::HeaderValue::from_static("web.local"),
        dst_service: Arc::from("web"),
        dst_zone: Arc::from("zone-a"),
        cross_zone: false,
        tls: crate::metrics::TlsLabel::False,
        route: Arc::from("route-0"),
    };
    for i in 0..iterations {
        metrics.request(&labels);
        metrics.response(
            &labels,
            200,
            None,
            "success",
            Duration::from_micros(100 + i as u64 % 5000),
        );
    }
    metrics.render(&Scrape::default()).len() as u64
}
