//! Endpoint sets and the balancers that pick from them.

pub mod ewma;
pub mod p2c;
pub mod zonal;

use crate::config::{self, BalancerKind};
use crate::resilience::breaker::{FailureAccrual, State};
use arc_swap::ArcSwap;
use ewma::RttEstimate;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zonal::ZonalState;

/// How many of a service's endpoints may be ejected at once, and how many are.
#[derive(Debug)]
pub struct Ejections {
    max: usize,
    ejected: AtomicUsize,
}

impl Ejections {
    /// No cap: an endpoint outside a service's balancer.
    pub fn unlimited() -> Self {
        Ejections {
            max: usize::MAX,
            ejected: AtomicUsize::new(0),
        }
    }

    fn try_eject(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Live state of one endpoint, shared by every request that uses it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub zone: Arc<str>,
    pub cluster: Option<Arc<str>>,
    /// Cost tier from this proxy (0 = cheapest).
    pub tier: u32,
    rtt: Mutex<RttEstimate>,
    breaker: Mutex<FailureAccrual>,
    /// The service's ejection cap; replaced when a reload rebuilds the service.
    ejections: ArcSwap<Ejections>,
    /// Mirrors "the breaker is closed" so the common pick takes no lock.
    closed: AtomicBool,
    /// Set by a failure, cleared by a success: a success with no failure
    /// run to reset takes no lock either.
    failing: AtomicBool,
    pending: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, zone: Option<&str>) -> Self {
        Self::with_details(addr, zone, None, 0, None)
    }

    pub fn with_details(
        addr: SocketAddr,
        zone: Option<&str>,
        cluster: Option<&str>,
        tier: u32,
        breaker: Option<config::Breaker>,
    ) -> Self {
        Endpoint {
            addr,
            zone: Arc::from(zone.unwrap_or(config::UNKNOWN_ZONE)),
            cluster: cluster.map(Arc::from),
            tier,
            rtt: Mutex::new(RttEstimate::new(ewma::DEFAULT_RTT, Instant::now())),
            breaker: Mutex::new(FailureAccrual::new(breaker)),
            ejections: ArcSwap::from_pointee(Ejections::unlimited()),
            closed: AtomicBool::new(true),
            failing: AtomicBool::new(false),
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

    pub fn available(&self, now: Instant) -> bool {
        self.closed.load(Ordering::Acquire) || lock(&self.breaker).available(now)
    }

    pub fn breaker_state(&self) -> State {
        lock(&self.breaker).state()
    }

    pub fn trips(&self) -> u64 {
        lock(&self.breaker).trips
    }

    /// Marks a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> PendingRequest {
        self.start_at(Instant::now())
    }

    pub fn start_at(self: &Arc<Self>, now: Instant) -> PendingRequest {
        if !self.closed.load(Ordering::Acquire) {
            lock(&self.breaker).on_dispatch(now);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        PendingRequest {
            endpoint: Some(self.clone()),
            started: now,
        }
    }

    pub fn record_success(&self) {
        if self.closed.load(Ordering::Acquire) && !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut breaker = lock(&self.breaker);
        if breaker.on_success() {
            self.ejections.load().release();
        }
        self.failing.store(false, Ordering::Release);
        self.closed
            .store(breaker.state() == State::Closed, Ordering::Release);
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut breaker = lock(&self.breaker);
        breaker.on_failure(Instant::now(), || self.ejections.load().try_eject());
        self.failing.store(true, Ordering::Release);
        self.closed
            .store(breaker.state() == State::Closed, Ordering::Release);
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

    /// Ends the pending state with a penalty sample: the endpoint could not
    /// be reached, so its cost rises at once (peak-EWMA takes a high sample
    /// whole) and the balancer turns away before the breaker would.
    pub fn unreachable(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            let now = Instant::now();
            let mut rtt = lock(&ep.rtt);
            let current = Duration::from_nanos(rtt.current_ns(now, ewma::DEFAULT_DECAY) as u64);
            let penalty = (current * 10).max(ewma::UNREACHABLE_PENALTY);
            rtt.observe(penalty, now, ewma::DEFAULT_DECAY);
            drop(rtt);
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

/// Why no endpoint could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPick {
    NoEndpoints,
    AllTripped,
}

/// The endpoints of one service and the rule that picks among them.
#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    zonal: Option<ZonalState>,
    /// Distinct tiers, cheapest first.
    tiers: Vec<u32>,
    /// Below this percentage of available endpoints, all are used (0: never).
    panic_threshold_percent: u32,
}

/// How one endpoint stands in its balancer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Active,
    Standby,
    Tripped,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Standby => "standby",
            Standing::Tripped => "tripped",
        }
    }
}

impl Balancer {
    /// With the zonal band Python sends by default (tests only: the data
    /// plane takes every setting from the config).
    #[cfg(test)]
    pub fn new(kind: BalancerKind, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self::with_zonal(kind, endpoints, config::fixtures::zonal())
    }

    pub fn with_zonal(kind: BalancerKind, endpoints: Vec<Arc<Endpoint>>, settings: config::Zonal) -> Self {
        Self::with_settings(kind, endpoints, settings, None)
    }

    /// A balancer over `endpoints`, which from now on eject within this
    /// service's cap (`breaker.max_ejection_percent`).
    pub fn with_settings(
        kind: BalancerKind,
        endpoints: Vec<Arc<Endpoint>>,
        zonal: config::Zonal,
        breaker: Option<&config::Breaker>,
    ) -> Self {
        let mut tiers: Vec<u32> = endpoints.iter().map(|e| e.tier).collect();
        tiers.sort_unstable();
        tiers.dedup();
        if let Some(b) = breaker {
            // Rounded down: one endpoint of one is never ejected, as a
            // flaky endpoint still serves better than none.
            let max = endpoints.len() * b.max_ejection_percent.min(100) as usize / 100;
            let ejected = endpoints
                .iter()
                .filter(|e| e.breaker_state() != State::Closed)
                .count();
            let ejections = Arc::new(Ejections {
                max,
                ejected: AtomicUsize::new(ejected),
            });
            for e in &endpoints {
                e.ejections.store(ejections.clone());
            }
        }
        Balancer {
            kind,
            endpoints,
            next: AtomicUsize::new(0),
            zonal: (kind == BalancerKind::Zonal).then(|| ZonalState::new(zonal)),
            tiers,
            panic_threshold_percent: breaker.map_or(0, |b| b.panic_threshold_percent.min(100)),
        }
    }

    /// Builds a service's balancer, keeping the live state of endpoints that
    /// `previous` already had (so a reload does not forget latencies).
    pub fn from_config(
        service: &config::Service,
        root: &config::Config,
        previous: Option<&Balancer>,
    ) -> Self {
        let endpoints = service
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr: SocketAddr = e.addr.parse().ok()?;
                let zone = e.zone.as_deref().unwrap_or(config::UNKNOWN_ZONE);
                let tier = zonal::tier_of(
                    e.zone.as_deref(),
                    e.cluster.as_deref(),
                    root.zone.as_deref(),
                    root.cluster.as_deref(),
                    &root.costs,
                );
                let kept = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|old| old.addr == addr && &*old.zone == zone && old.tier == tier)
                });
                Some(kept.cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint::with_details(
                        addr,
                        Some(zone),
                        e.cluster.as_deref(),
                        tier,
                        service.breaker.clone(),
                    ))
                }))
            })
            .collect();
        Balancer::with_settings(
            service.balancer,
            endpoints,
            service.zonal.clone(),
            service.breaker.as_ref(),
        )
    }

    pub fn kind(&self) -> BalancerKind {
        self.kind
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn zonal(&self) -> Option<&ZonalState> {
        self.zonal.as_ref()
    }

    /// Index of the chosen endpoint.
    pub fn pick(&self) -> Result<usize, NoPick> {
        self.pick_at(Instant::now(), &[])
    }

    /// Picks an endpoint, avoiding `exclude` (those a retry already failed on)
    /// when any other is available.
    pub fn pick_at(&self, now: Instant, exclude: &[usize]) -> Result<usize, NoPick> {
        if self.endpoints.is_empty() {
            return Err(NoPick::NoEndpoints);
        }
        match self.choose(now, exclude) {
            Some(i) => Ok(i),
            None if !exclude.is_empty() => self.choose(now, &[]).ok_or(NoPick::AllTripped),
            None => Err(NoPick::AllTripped),
        }
    }

    fn choose(&self, now: Instant, exclude: &[usize]) -> Option<usize> {
        let eps = &self.endpoints;
        // The common case: every endpoint usable, no tiers: pick without building a list.
        if self.zonal.is_none() && exclude.is_empty() && eps.iter().all(|e| e.closed.load(Ordering::Acquire))
        {
            return match self.kind {
                BalancerKind::RoundRobin => Some(self.next.fetch_add(1, Ordering::Relaxed) % eps.len()),
                _ => p2c::choose(eps.len(), |i| eps[i].cost(now)),
            };
        }
        // Each endpoint's breaker is asked once (a tripped one takes a lock).
        let available: Vec<bool> = eps.iter().map(|e| e.available(now)).collect();
        // In panic, being ejected no longer keeps an endpoint out.
        let panic = self.panics_with(available.iter().filter(|&&a| a).count());
        let usable = |i: usize| !exclude.contains(&i) && (panic || available[i]);
        let candidates: Vec<usize> = match &self.zonal {
            Some(z) => self.zonal_candidates(z, now, &usable, exclude.is_empty()),
            None => (0..self.endpoints.len()).filter(|&i| usable(i)).collect(),
        };
        match self.kind {
            BalancerKind::RoundRobin => {
                // A retry's pick must not shift the rotation for everyone else.
                let turn = if exclude.is_empty() {
                    self.next.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.next.load(Ordering::Relaxed)
                };
                let n = candidates.len();
                (n > 0).then(|| candidates[turn % n])
            }
            BalancerKind::PeakEwma | BalancerKind::Zonal => {
                p2c::choose(candidates.len(), |i| eps[candidates[i]].cost(now)).map(|i| candidates[i])
            }
        }
    }

    fn zonal_candidates(
        &self,
        z: &ZonalState,
        now: Instant,
        usable: &dyn Fn(usize) -> bool,
        observe: bool,
    ) -> Vec<usize> {
        let healthy: Vec<Vec<usize>> = self
            .tiers
            .iter()
            .map(|&t| {
                (0..self.endpoints.len())
                    .filter(|&i| self.endpoints[i].tier == t && usable(i))
                    .collect::<Vec<_>>()
            })
            .filter(|tier| !tier.is_empty())
            .collect();
        let load_of = |k: usize| {
            let active = healthy[..k].iter().flatten();
            let (sum, n) = active.fold((0usize, 0usize), |(s, n), &i| {
                (s + self.endpoints[i].pending(), n + 1)
            });
            sum as f64 / n.max(1) as f64
        };
        let k = z.decide(healthy.len(), load_of, now, observe);
        healthy.into_iter().take(k).flatten().collect()
    }

    /// Whether so few endpoints are available (below the panic threshold)
    /// that the balancer uses all of them, ejected or not.
    pub fn in_panic(&self, now: Instant) -> bool {
        self.panics_with(self.endpoints.iter().filter(|e| e.available(now)).count())
    }

    /// Whether `available` endpoints are below the panic threshold.
    fn panics_with(&self, available: usize) -> bool {
        available * 100 < self.panic_threshold_percent as usize * self.endpoints.len()
    }

    /// Active, standby or tripped, for metrics and the admin API.
    pub fn standing(&self, now: Instant) -> Vec<Standing> {
        let active_tiers: Vec<u32> = match &self.zonal {
            None => self.tiers.clone(),
            Some(z) => {
                let mut healthy: Vec<u32> = self
                    .tiers
                    .iter()
                    .copied()
                    .filter(|&t| self.endpoints.iter().any(|e| e.tier == t && e.available(now)))
                    .collect();
                healthy.truncate(z.active_tiers().max(1));
                healthy
            }
        };
        self.endpoints
            .iter()
            .map(|e| match e.breaker_state() {
                State::Closed if active_tiers.contains(&e.tier) => Standing::Active,
                State::Closed => Standing::Standby,
                _ if e.available(now) && active_tiers.contains(&e.tier) => Standing::Active,
                _ => Standing::Tripped,
            })
            .collect()
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
        tiered(&vec![0; n])
    }

    fn tiered(tiers: &[u32]) -> Vec<Arc<Endpoint>> {
        tiers
            .iter()
            .enumerate()
            .map(|(i, &tier)| {
                let addr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                let breaker = config::Breaker {
                    consecutive_failures: 1,
                    ..config::fixtures::breaker()
                };
                Arc::new(Endpoint::with_details(addr, Some("z"), None, tier, Some(breaker)))
            })
            .collect()
    }

    fn shares(b: &Balancer, rounds: usize, rtt_of: impl Fn(usize) -> Duration) -> Vec<usize> {
        // Virtual clock: one request every millisecond, run one at a time.
        let mut now = Instant::now();
        let mut counts = vec![0; b.endpoints().len()];
        for _ in 0..rounds {
            let i = b.pick_at(now, &[]).unwrap();
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
            assert_eq!(b.pick(), Ok(1));
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
        assert_eq!(
            Balancer::new(BalancerKind::PeakEwma, vec![]).pick(),
            Err(NoPick::NoEndpoints)
        );
        assert_eq!(
            Balancer::new(BalancerKind::RoundRobin, vec![]).pick(),
            Err(NoPick::NoEndpoints)
        );
    }

    #[test]
    fn tripped_endpoints_are_skipped_and_all_tripped_fails_fast() {
        let eps = endpoints(2);
        let b = Balancer::new(BalancerKind::PeakEwma, eps.clone());
        eps[0].record_failure();
        for _ in 0..20 {
            assert_eq!(b.pick(), Ok(1));
        }
        eps[1].record_failure();
        assert_eq!(b.pick(), Err(NoPick::AllTripped));
    }

    fn capped(n: usize, max_ejection_percent: u32, panic_threshold_percent: u32) -> Balancer {
        let breaker = config::Breaker {
            consecutive_failures: 1,
            max_ejection_percent,
            panic_threshold_percent,
            ..config::fixtures::breaker()
        };
        let eps = (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                Arc::new(Endpoint::with_details(
                    addr,
                    Some("z"),
                    None,
                    0,
                    Some(breaker.clone()),
                ))
            })
            .collect();
        Balancer::with_settings(
            BalancerKind::PeakEwma,
            eps,
            config::fixtures::zonal(),
            Some(&breaker),
        )
    }

    #[test]
    fn at_most_the_capped_share_of_endpoints_is_ejected() {
        let b = capped(4, 50, 0);
        for e in b.endpoints() {
            e.record_failure();
        }
        let ejected = b
            .endpoints()
            .iter()
            .filter(|e| e.breaker_state() != State::Closed)
            .count();
        assert_eq!(ejected, 2);
        // A lone endpoint is never ejected: failing half the time beats none.
        let single = capped(1, 50, 50);
        for _ in 0..20 {
            single.endpoints()[0].record_failure();
        }
        assert_eq!(single.pick(), Ok(0));
        // An ejected endpoint that recovers gives its place back.
        let b = capped(2, 50, 0);
        b.endpoints()[0].record_failure();
        b.endpoints()[1].record_failure();
        assert_eq!(b.endpoints()[1].breaker_state(), State::Closed, "over the cap");
        let mut probe = b.endpoints()[0].start_at(Instant::now() + Duration::from_secs(120));
        probe.finish();
        b.endpoints()[0].record_success();
        b.endpoints()[1].record_failure();
        assert_ne!(
            b.endpoints()[1].breaker_state(),
            State::Closed,
            "its place is free again"
        );
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_is_used() {
        // Nothing caps ejection here, so three of four trip.
        let b = capped(4, 100, 50);
        for e in &b.endpoints()[..3] {
            e.record_failure();
        }
        assert!(b.in_panic(Instant::now()));
        let mut seen = [false; 4];
        for _ in 0..400 {
            seen[b.pick().unwrap()] = true;
        }
        // (The healthy one may lose every tie on cost: it was made last, so
        // its seed estimate has decayed least.)
        assert_eq!(seen[..3], [true; 3], "the tripped endpoints get traffic again");
        // With panic off, only the healthy one gets traffic.
        let b = capped(4, 100, 0);
        for e in &b.endpoints()[..3] {
            e.record_failure();
        }
        assert!(!b.in_panic(Instant::now()));
        assert!((0..100).all(|_| b.pick() == Ok(3)));
    }

    #[test]
    fn an_unreachable_endpoint_costs_more_at_once() {
        let b = Balancer::new(BalancerKind::PeakEwma, endpoints(2));
        b.endpoints()[0].start().unreachable();
        assert!(b.endpoints()[0].rtt_ms() > 900.0);
        assert!((0..50).all(|_| b.pick() == Ok(1)));
    }

    #[test]
    fn retry_avoids_the_failed_endpoint_unless_it_is_the_only_one() {
        let b = Balancer::new(BalancerKind::PeakEwma, endpoints(3));
        for _ in 0..50 {
            assert_ne!(b.pick_at(Instant::now(), &[1]), Ok(1));
        }
        let single = Balancer::new(BalancerKind::PeakEwma, endpoints(1));
        assert_eq!(single.pick_at(Instant::now(), &[0]), Ok(0));
    }

    #[test]
    fn zonal_stays_local_at_light_load() {
        let b = Balancer::with_zonal(
            BalancerKind::Zonal,
            tiered(&[0, 0, 1, 1, 2]),
            config::fixtures::zonal(),
        );
        for _ in 0..200 {
            assert_eq!(b.endpoints()[b.pick().unwrap()].tier, 0);
        }
    }

    #[test]
    fn zonal_spills_when_loaded_and_when_tier_is_down() {
        let settings = config::Zonal {
            dwell_ms: 0,
            ..config::fixtures::zonal()
        };
        let eps = tiered(&[0, 1, 1, 2]);
        let b = Balancer::with_zonal(BalancerKind::Zonal, eps.clone(), settings);
        // Three in flight on the only local endpoint: load 3 > 2, so tier 1 joins.
        let _held: Vec<_> = (0..3).map(|_| eps[0].start()).collect();
        b.pick().unwrap();
        assert_eq!(b.zonal().unwrap().active_tiers(), 2);
        let picked: Vec<u32> = (0..50).map(|_| eps[b.pick().unwrap()].tier).collect();
        assert!(picked.contains(&1) && !picked.contains(&2), "{picked:?}");
        drop(_held);
        // Load falls to 0: back to the local tier.
        b.pick().unwrap();
        assert_eq!(b.zonal().unwrap().active_tiers(), 1);
        // The local endpoint trips: tier 1 takes over at once.
        eps[0].record_failure();
        assert_eq!(eps[b.pick().unwrap()].tier, 1);
        let standing = b.standing(Instant::now());
        assert_eq!(
            standing,
            vec![
                Standing::Tripped,
                Standing::Active,
                Standing::Active,
                Standing::Standby
            ]
        );
    }
}
