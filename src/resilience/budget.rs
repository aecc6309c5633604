//! Retry budget: over a sliding window of `ttl`, retries may add up to
//! `ratio` x requests, plus `min_per_second` x ttl so that low-traffic routes
//! can still retry.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    width: Duration,
    start: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Per bucket: (bucket number, requests, retries)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Window {
    fn bucket(&mut self, n: u64) -> &mut (u64, u64, u64) {
        let slot = &mut self.buckets[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot
    }

    fn totals(&self, n: u64) -> (u64, u64) {
        let live = |b: &&(u64, u64, u64)| b.0 + (BUCKETS as u64) > n && b.0 <= n;
        self.buckets
            .iter()
            .filter(live)
            .fold((0, 0), |(r, t), b| (r + b.1, t + b.2))
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        RetryBudget {
            ratio: ratio.max(0.0),
            reserve: f64::from(min_per_second) * ttl.as_secs_f64(),
            width: ttl / BUCKETS as u32,
            start: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    fn bucket_of(&self, now: Instant) -> u64 {
        // Bucket 0 is never used, so a zeroed slot never counts as live.
        (now.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos()) as u64 + 1
    }

    /// Records an original (non-retry) request.
    pub fn deposit(&self, now: Instant) {
        let n = self.bucket_of(now);
        self.window.lock().unwrap_or_else(|p| p.into_inner()).bucket(n).1 += 1;
    }

    /// Takes one retry from the budget if there is room.
    pub fn withdraw(&self, now: Instant) -> bool {
        let n = self.bucket_of(now);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = w.totals(n);
        if (retries + 1) as f64 > self.reserve + self.ratio * requests as f64 {
            return false;
        }
        w.bucket(n).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_allows_min_per_second_times_ttl() {
        let b = RetryBudget::new(0.0, 2, Duration::from_secs(10));
        let now = b.start;
        let granted = (0..100).filter(|_| b.withdraw(now)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn ratio_of_requests_is_added() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        let now = b.start;
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..100).filter(|_| b.withdraw(now)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let b = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        let t0 = b.start;
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert!(b.withdraw(t0));
        // Eleven seconds later the deposits have expired.
        let later = t0 + Duration::from_secs(11);
        assert!(!b.withdraw(later));
        b.deposit(later);
        b.deposit(later);
        assert!(b.withdraw(later));
        assert!(!b.withdraw(later));
    }
}
