//! Cost-aware zonal selection (HAZL-like): keep traffic on the cheapest tier
//! with healthy endpoints, add the next tier while load per active endpoint
//! is above `load_high`, drop the costliest added tier below `load_low`, and
//! change at most once per `dwell`.

use crate::config;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cost of reaching an endpoint from this proxy: same zone 0, other zone
/// in the same cluster 1, other cluster 2, unless `costs` says otherwise
/// (keys "cluster/zone" first, then "zone").
pub fn tier_of(
    endpoint_zone: Option<&str>,
    endpoint_cluster: Option<&str>,
    proxy_zone: Option<&str>,
    proxy_cluster: Option<&str>,
    costs: &std::collections::BTreeMap<String, u32>,
) -> u32 {
    let cluster = endpoint_cluster.or(proxy_cluster);
    if let (Some(c), Some(z)) = (cluster, endpoint_zone) {
        if let Some(cost) = costs.get(&format!("{c}/{z}")) {
            return *cost;
        }
    }
    if let Some(cost) = endpoint_zone.and_then(|z| costs.get(z)) {
        return *cost;
    }
    let same_cluster = endpoint_cluster.is_none() || endpoint_cluster == proxy_cluster;
    match (same_cluster, endpoint_zone, proxy_zone) {
        (false, _, _) => 2,
        (true, Some(e), Some(p)) if e == p => 0,
        _ => 1,
    }
}

#[derive(Debug)]
pub struct ZonalState {
    settings: config::Zonal,
    dwell: Duration,
    inner: Mutex<(usize, Option<Instant>)>,
    active_tiers: AtomicUsize,
    load_bits: AtomicU64,
}

impl ZonalState {
    pub fn new(settings: config::Zonal) -> Self {
        ZonalState {
            dwell: Duration::from_millis(settings.dwell_ms),
            settings,
            inner: Mutex::new((1, None)),
            active_tiers: AtomicUsize::new(1),
            load_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn active_tiers(&self) -> usize {
        self.active_tiers.load(Ordering::Relaxed)
    }

    pub fn load(&self) -> f64 {
        f64::from_bits(self.load_bits.load(Ordering::Relaxed))
    }

    /// Given the available endpoints grouped by tier (cheapest first, empty
    /// tiers already removed) and the load of a candidate active set, returns
    /// how many tiers to use. `observe` is false for a retry's one-off view.
    pub fn decide(
        &self,
        healthy_tiers: usize,
        load_of: impl Fn(usize) -> f64,
        now: Instant,
        observe: bool,
    ) -> usize {
        if healthy_tiers == 0 {
            return 0;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut k = inner.0.clamp(1, healthy_tiers);
        let load = load_of(k);
        if observe {
            let settled = inner
                .1
                .is_none_or(|at| now.saturating_duration_since(at) >= self.dwell);
            if settled {
                if load > self.settings.load_high && k < healthy_tiers {
                    k += 1;
                    inner.1 = Some(now);
                } else if load < self.settings.load_low && k > 1 {
                    k -= 1;
                    inner.1 = Some(now);
                }
            }
            inner.0 = k;
            self.active_tiers.store(k, Ordering::Relaxed);
            self.load_bits.store(load.to_bits(), Ordering::Relaxed);
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn state(dwell_ms: u64) -> ZonalState {
        ZonalState::new(config::Zonal {
            load_low: 0.8,
            load_high: 2.0,
            dwell_ms,
        })
    }

    #[test]
    fn default_tiers_and_overrides() {
        let none = BTreeMap::new();
        let t = |z, c| tier_of(z, c, Some("a"), Some("east"), &none);
        assert_eq!(t(Some("a"), None), 0);
        assert_eq!(t(Some("a"), Some("east")), 0);
        assert_eq!(t(Some("b"), None), 1);
        assert_eq!(t(Some("a"), Some("west")), 2);
        assert_eq!(t(None, None), 1);
        let costs: BTreeMap<String, u32> = [("b".to_string(), 3), ("west/a".to_string(), 5)].into();
        assert_eq!(tier_of(Some("b"), None, Some("a"), Some("east"), &costs), 3);
        assert_eq!(
            tier_of(Some("a"), Some("west"), Some("a"), Some("east"), &costs),
            5
        );
    }

    #[test]
    fn band_adds_and_drops_tiers_with_hysteresis() {
        let s = state(0);
        let now = Instant::now();
        assert_eq!(s.decide(3, |_| 1.0, now, true), 1, "in band: stay");
        assert_eq!(s.decide(3, |_| 2.5, now, true), 2, "above high: add");
        assert_eq!(s.decide(3, |_| 3.0, now, true), 3);
        assert_eq!(s.decide(3, |_| 3.0, now, true), 3, "no tier left to add");
        assert_eq!(s.decide(3, |_| 1.5, now, true), 3, "between low and high: hold");
        assert_eq!(s.decide(3, |_| 0.5, now, true), 2, "below low: drop costliest");
        assert_eq!(s.decide(3, |_| 0.5, now, true), 1);
        assert_eq!(s.decide(3, |_| 0.0, now, true), 1, "never below one tier");
    }

    #[test]
    fn dwell_limits_changes() {
        let s = state(1_000);
        let t0 = Instant::now();
        assert_eq!(s.decide(3, |_| 5.0, t0, true), 2);
        assert_eq!(
            s.decide(3, |_| 5.0, t0 + Duration::from_millis(500), true),
            2,
            "within dwell"
        );
        assert_eq!(s.decide(3, |_| 5.0, t0 + Duration::from_millis(1000), true), 3);
        assert_eq!(
            s.decide(3, |_| 0.0, t0 + Duration::from_millis(1500), true),
            3,
            "within dwell"
        );
        assert_eq!(s.decide(3, |_| 0.0, t0 + Duration::from_millis(2000), true), 2);
    }

    #[test]
    fn fewer_healthy_tiers_clamp_the_active_count() {
        let s = state(0);
        let now = Instant::now();
        s.decide(3, |_| 5.0, now, true);
        s.decide(3, |_| 5.0, now, true);
        assert_eq!(s.decide(1, |_| 1.0, now, true), 1);
        assert_eq!(s.decide(0, |_| 1.0, now, true), 0);
    }

    #[test]
    fn a_retry_view_does_not_move_state() {
        let s = state(0);
        let now = Instant::now();
        assert_eq!(s.decide(3, |_| 9.0, now, false), 1);
        assert_eq!(s.active_tiers(), 1);
    }
}
