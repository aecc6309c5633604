//! Endpoint sets and the balancers that pick from them.

pub mod ewma;
pub mod p2c;
pub mod rng;

use crate::config::{self, BalancerKind};
use ewma::RttEstimate;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Live state of one endpoint, shared by every request that uses it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub zone: Arc<str>,
    rtt: Mutex<RttEstimate>,
    pending: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, zone: Option<&str>) -> Self {
        Endpoint {
            addr,
            zone: Arc::from(zone.unwrap_or("unknown")),
            rtt: Mutex::new(RttEstimate::new(ewma::DEFAULT_RTT, Instant::now())),
            pending: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn rtt_ms(&self) -> f64 {
        self.rtt_estimate_ns(Instant::now()) / 1e6
    }

    fn rtt_estimate_ns(&self, now: Instant) -> f64 {
        lock(&self.rtt).current_ns(now, ewma::DEFAULT_DECAY)
    }

    pub fn cost(&self, now: Instant) -> f64 {
        ewma::cost(self.rtt_estimate_ns(now), self.pending())
    }

    /// Marks a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> PendingRequest {
        self.start_at(Instant::now())
    }

    pub fn start_at(self: &Arc<Self>, now: Instant) -> PendingRequest {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        PendingRequest {
            endpoint: Some(self.clone()),
            started: now,
        }
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned estimate is still a usable number.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An in-flight request: counts as pending until the response's first data
/// frame (or its end), and then feeds the round-trip sample to the estimate.
#[derive(Debug)]
pub struct PendingRequest {
    endpoint: Option<Arc<Endpoint>>,
    started: Instant,
}

impl PendingRequest {
    pub fn finish(&mut self) {
        self.finish_at(Instant::now());
    }

    pub fn finish_at(&mut self, now: Instant) {
        if let Some(ep) = self.endpoint.take() {
            lock(&ep.rtt).observe(now - self.started, now, ewma::DEFAULT_DECAY);
            ep.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ends the pending state without a round-trip sample (failed request).
    pub fn abandon(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            ep.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The endpoints of one service and the rule that picks among them.
#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(kind: BalancerKind, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Balancer {
            kind,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Builds a service's balancer, keeping the live state of endpoints that
    /// `previous` already had (so a reload does not forget latencies).
    pub fn from_config(service: &config::Service, previous: Option<&Balancer>) -> Self {
        let endpoints = service
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr: SocketAddr = e.addr.parse().ok()?;
                let zone = e.zone.as_deref().unwrap_or("unknown");
                let kept = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|old| old.addr == addr && &*old.zone == zone)
                });
                Some(
                    kept.cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(addr, Some(zone)))),
                )
            })
            .collect();
        Balancer::new(service.balancer, endpoints)
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Index of the chosen endpoint, or None when the service has none.
    pub fn pick(&self) -> Option<usize> {
        self.pick_at(Instant::now())
    }

    pub fn pick_at(&self, now: Instant) -> Option<usize> {
        let eps = &self.endpoints;
        match self.kind {
            BalancerKind::RoundRobin if !eps.is_empty() => {
                Some(self.next.fetch_add(1, Ordering::Relaxed) % eps.len())
            }
            BalancerKind::RoundRobin => None,
            BalancerKind::PeakEwma => p2c::choose(eps.len(), |i| eps[i].cost(now)),
        }
    }
}

/// Feeds one synthetic request sent at `sent` that took `rtt` (tests, benches).
pub fn simulate_request(ep: &Arc<Endpoint>, sent: Instant, rtt: Duration) {
    ep.start_at(sent).finish_at(sent + rtt);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                Arc::new(Endpoint::new(addr, Some("z")))
            })
            .collect()
    }

    fn shares(b: &Balancer, rounds: usize, rtt_of: impl Fn(usize) -> Duration) -> Vec<usize> {
        // Virtual clock: one request every millisecond, run one at a time.
        let mut now = Instant::now();
        let mut counts = vec![0; b.endpoints().len()];
        for _ in 0..rounds {
            let i = b.pick_at(now).unwrap();
            counts[i] += 1;
            simulate_request(&b.endpoints()[i], now, rtt_of(i));
            now += Duration::from_millis(1);
        }
        counts
    }

    #[test]
    fn ten_times_slower_endpoint_gets_a_small_share() {
        let b = Balancer::new(BalancerKind::PeakEwma, endpoints(3));
        let counts = shares(&b, 3000, |i| Duration::from_millis(if i == 0 { 100 } else { 10 }));
        let slow_share = counts[0] as f64 / 3000.0;
        assert!(
            slow_share < 0.05,
            "slow endpoint got {slow_share:.3} ({counts:?})"
        );
    }

    #[test]
    fn equal_endpoints_share_evenly() {
        let b = Balancer::new(BalancerKind::PeakEwma, endpoints(4));
        let counts = shares(&b, 4000, |_| Duration::from_millis(10));
        for c in &counts {
            assert!((600..=1400).contains(c), "{counts:?}");
        }
    }

    #[test]
    fn pending_requests_steer_away() {
        let eps = endpoints(2);
        let b = Balancer::new(BalancerKind::PeakEwma, eps.clone());
        let _held: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        for _ in 0..50 {
            assert_eq!(b.pick(), Some(1));
        }
    }

    #[test]
    fn pending_lasts_until_finished() {
        let eps = endpoints(1);
        let mut p = eps[0].start();
        assert_eq!(eps[0].pending(), 1);
        p.finish();
        assert_eq!(eps[0].pending(), 0);
        drop(p); // finishing twice must not underflow
        assert_eq!(eps[0].pending(), 0);
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(BalancerKind::RoundRobin, endpoints(3));
        let picks: Vec<u16> = (0..6)
            .map(|_| b.endpoints()[b.pick().unwrap()].addr.port())
            .collect();
        assert_eq!(picks, vec![10_000, 10_001, 10_002, 10_000, 10_001, 10_002]);
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert!(Balancer::new(BalancerKind::PeakEwma, vec![]).pick().is_none());
        assert!(Balancer::new(BalancerKind::RoundRobin, vec![]).pick().is_none());
    }
}
