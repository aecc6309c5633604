//! Failure accrual (a circuit breaker per endpoint).
//!
//! `consecutive_failures` in a row trip the endpoint for a penalty that starts
//! at `min_penalty` and doubles on each re-trip up to `max_penalty`, scaled by
//! a random factor in [1 - jitter, 1]. Once the penalty is over, exactly one
//! real request probes the endpoint: success closes the breaker, failure
//! re-trips it with the next penalty.

use crate::config;
use crate::rng;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Tripped until the instant; no traffic.
    Open(Instant),
    /// The penalty is over and one probe request is in flight.
    Probing,
}

#[derive(Debug)]
pub struct FailureAccrual {
    settings: Option<config::Breaker>,
    consecutive: u32,
    state: State,
    next_penalty: Duration,
    pub trips: u64,
}

impl FailureAccrual {
    pub fn new(settings: Option<config::Breaker>) -> Self {
        let next_penalty = settings
            .as_ref()
            .map_or(Duration::ZERO, |s| Duration::from_millis(s.min_penalty_ms));
        FailureAccrual {
            settings,
            consecutive: 0,
            state: State::Closed,
            next_penalty,
            trips: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// May a new request go here now? (Does not claim a probe.)
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open(until) => now >= until,
            State::Probing => false,
        }
    }

    /// Called when a request is sent here; turns an expired penalty into the probe.
    pub fn on_dispatch(&mut self, now: Instant) {
        if matches!(self.state, State::Open(until) if now >= until) {
            self.state = State::Probing;
        }
    }

    /// Returns true when this ends an ejection.
    pub fn on_success(&mut self) -> bool {
        self.consecutive = 0;
        if self.state == State::Closed {
            return false;
        }
        self.state = State::Closed;
        if let Some(s) = &self.settings {
            self.next_penalty = Duration::from_millis(s.min_penalty_ms);
        }
        true
    }

    /// Counts a failure. A closed breaker that has seen enough trips only if
    /// `may_eject` agrees (the service's ejection cap); a failed probe
    /// re-trips at once, being ejected already.
    pub fn on_failure(&mut self, now: Instant, may_eject: impl FnOnce() -> bool) {
        let Some(settings) = &self.settings else { return };
        self.consecutive = self.consecutive.saturating_add(1);
        let probe_failed = self.state == State::Probing;
        let trips = probe_failed
            || (self.state == State::Closed
                && self.consecutive >= settings.consecutive_failures
                && may_eject());
        if trips {
            let jitter = settings.jitter.clamp(0.0, 1.0);
            let scale = 1.0 - jitter * (rng::below(1_000_000) as f64 / 1_000_000.0);
            self.state = State::Open(now + self.next_penalty.mul_f64(scale));
            self.trips += 1;
            let max = Duration::from_millis(settings.max_penalty_ms);
            self.next_penalty = (self.next_penalty * 2).min(max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32, jitter: f64) -> FailureAccrual {
        FailureAccrual::new(Some(config::Breaker {
            consecutive_failures: n,
            min_penalty_ms: 1_000,
            max_penalty_ms: 4_000,
            jitter,
            ..config::fixtures::breaker()
        }))
    }

    fn open_for(b: &FailureAccrual, now: Instant) -> Duration {
        match b.state() {
            State::Open(until) => until - now,
            other => panic!("expected open, got {other:?}"),
        }
    }

    #[test]
    fn trips_after_consecutive_failures_only() {
        let now = Instant::now();
        let mut b = breaker(3, 0.0);
        b.on_failure(now, || true);
        b.on_failure(now, || true);
        b.on_success(); // resets the run
        b.on_failure(now, || true);
        b.on_failure(now, || true);
        assert!(b.available(now));
        b.on_failure(now, || true);
        assert!(!b.available(now));
        assert_eq!(open_for(&b, now), Duration::from_secs(1));
    }

    #[test]
    fn one_probe_after_penalty_and_backoff_doubles_to_max() {
        let t0 = Instant::now();
        let mut b = breaker(1, 0.0);
        b.on_failure(t0, || true);
        let mut now = t0;
        for expected in [1, 2, 4, 4] {
            assert_eq!(open_for(&b, now), Duration::from_secs(expected));
            assert!(!b.available(now + Duration::from_millis(expected * 1000 - 1)));
            now += Duration::from_secs(expected);
            assert!(b.available(now));
            b.on_dispatch(now);
            assert_eq!(b.state(), State::Probing);
            assert!(!b.available(now), "only one probe at a time");
            b.on_failure(now, || true);
        }
        // A successful probe closes it and resets the penalty.
        now += Duration::from_secs(4);
        b.on_dispatch(now);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        b.on_failure(now, || true);
        assert_eq!(open_for(&b, now), Duration::from_secs(1));
    }

    #[test]
    fn jitter_shortens_within_bounds() {
        let now = Instant::now();
        for _ in 0..200 {
            let mut b = breaker(1, 0.5);
            b.on_failure(now, || true);
            let d = open_for(&b, now);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_trip_the_ejection_cap_refuses_leaves_the_breaker_closed() {
        let now = Instant::now();
        let mut b = breaker(2, 0.0);
        for _ in 0..10 {
            b.on_failure(now, || false);
        }
        assert_eq!(b.state(), State::Closed);
        b.on_failure(now, || true);
        assert!(!b.available(now), "trips as soon as the cap allows");
        assert!(b.on_success(), "closing ends the ejection");
        assert!(!b.on_success());
    }

    #[test]
    fn disabled_never_trips() {
        let now = Instant::now();
        let mut b = FailureAccrual::new(None);
        for _ in 0..100 {
            b.on_failure(now, || true);
        }
        assert!(b.available(now));
    }
}
