//! Peak-EWMA round-trip estimate (Linkerd semantics).
//!
//! A sample above the estimate replaces it at once (the "peak"); a lower one is
//! blended in with alpha = 1 - exp(-dt / decay). While nothing is observed the
//! estimate decays toward zero, so an endpoint that was once slow is tried
//! again eventually instead of being starved forever.

use std::time::{Duration, Instant};

pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The least round trip an unreachable endpoint is charged.
pub const UNREACHABLE_PENALTY: Duration = Duration::from_secs(1);
const MIN_SEED: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
pub struct RttEstimate {
    rtt_ns: f64,
    updated: Instant,
}

impl RttEstimate {
    pub fn new(seed: Duration, now: Instant) -> Self {
        RttEstimate {
            rtt_ns: seed.max(MIN_SEED).as_nanos() as f64,
            updated: now,
        }
    }

    /// Records an observed round trip.
    pub fn observe(&mut self, sample: Duration, now: Instant, decay: Duration) {
        let sample_ns = sample.as_nanos() as f64;
        if sample_ns > self.rtt_ns {
            self.rtt_ns = sample_ns;
        } else {
            let alpha = 1.0 - (-elapsed_ns(self.updated, now) / decay.as_nanos() as f64).exp();
            self.rtt_ns += alpha * (sample_ns - self.rtt_ns);
        }
        self.updated = self.updated.max(now);
    }

    /// The estimate as of `now`, decayed toward zero since the last sample.
    pub fn current_ns(&self, now: Instant, decay: Duration) -> f64 {
        let keep = (-elapsed_ns(self.updated, now) / decay.as_nanos() as f64).exp();
        self.rtt_ns * keep
    }
}

fn elapsed_ns(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_nanos() as f64
}

/// Peak-EWMA cost: rtt_estimate x (pending + 1).
pub fn cost(rtt_ns: f64, pending: usize) -> f64 {
    rtt_ns * (pending as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn seed_is_floored_at_one_millisecond() {
        let now = Instant::now();
        let e = RttEstimate::new(Duration::from_micros(10), now);
        assert_eq!(e.current_ns(now, DEFAULT_DECAY), 1_000_000.0);
    }

    #[test]
    fn peak_replaces_at_once() {
        let now = Instant::now();
        let mut e = RttEstimate::new(DEFAULT_RTT, now);
        e.observe(200 * MS, now, DEFAULT_DECAY);
        assert_eq!(e.current_ns(now, DEFAULT_DECAY), 200e6);
    }

    #[test]
    fn lower_samples_blend_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = RttEstimate::new(100 * MS, t0);
        let t1 = t0 + Duration::from_secs(10); // one decay period: alpha = 1 - 1/e
        e.observe(10 * MS, t1, DEFAULT_DECAY);
        let expected = 100e6 + (1.0 - (-1.0f64).exp()) * (10e6 - 100e6);
        assert!((e.current_ns(t1, DEFAULT_DECAY) - expected).abs() < 1.0);
        // A sample arriving with no elapsed time barely moves the estimate.
        let mut f = RttEstimate::new(100 * MS, t0);
        f.observe(10 * MS, t0, DEFAULT_DECAY);
        assert_eq!(f.current_ns(t0, DEFAULT_DECAY), 100e6);
    }

    #[test]
    fn idle_estimate_decays() {
        let t0 = Instant::now();
        let e = RttEstimate::new(100 * MS, t0);
        let later = e.current_ns(t0 + Duration::from_secs(20), DEFAULT_DECAY);
        assert!(later < 100e6 * 0.2, "{later}");
    }

    #[test]
    fn cost_grows_with_pending() {
        assert_eq!(cost(5.0, 0), 5.0);
        assert_eq!(cost(5.0, 3), 20.0);
    }
}
