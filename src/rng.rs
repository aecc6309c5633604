//! A tiny per-thread xorshift generator: the balancer, the traffic split and
//! the breaker's jitter need cheap, unbiased-enough randomness, not cryptographic quality.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9);
    let local = 0u8;
    // Mix in a stack address so threads started in the same nanosecond differ.
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// A uniformly distributed number in `0..bound` (bound > 0).
pub fn below(bound: u64) -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        // Multiply-shift maps 64 random bits onto the range without modulo bias worth noting.
        ((x as u128 * bound as u128) >> 64) as u64
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stays_in_range_and_covers_it() {
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[super::below(4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
