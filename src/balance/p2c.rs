//! Power of two choices: pick two distinct candidates at random, keep the cheaper.

use crate::rng;

/// Returns the index of the chosen candidate, or None when there are none.
pub fn choose(len: usize, cost: impl Fn(usize) -> f64) -> Option<usize> {
    match len {
        0 => None,
        1 => Some(0),
        _ => {
            let a = rng::below(len as u64) as usize;
            // Draw from the remaining len-1 slots so the two are always distinct.
            let mut b = rng::below(len as u64 - 1) as usize;
            if b >= a {
                b += 1;
            }
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_single() {
        assert_eq!(choose(0, |_| 0.0), None);
        assert_eq!(choose(1, |_| 0.0), Some(0));
    }

    #[test]
    fn two_candidates_always_compare_both() {
        for _ in 0..200 {
            assert_eq!(choose(2, |i| if i == 1 { 1.0 } else { 5.0 }), Some(1));
        }
    }

    #[test]
    fn the_most_expensive_is_never_chosen() {
        for _ in 0..500 {
            assert_ne!(choose(5, |i| i as f64), Some(4));
        }
    }
}
