//! The idle HTTP/1.1 connections to one endpoint, whichever engine drives
//! them (hyper's sender or the inline one), under one expiry rule: a
//! connection idle for the endpoint's `idle_timeout` is closed. Newest at the
//! back (reused first, while the server surely still holds it), oldest at the
//! front (expired first). Expired ones are dropped outside the lock.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most this many idle connections are kept per endpoint.
pub(super) const MAX_IDLE_PER_ENDPOINT: usize = 512;

pub(super) struct IdleList<C> {
    conns: Mutex<VecDeque<(Instant, C)>>,
    timeout: Duration,
}

/// What a checkout makes of one idle connection it looks at.
pub(super) enum Look {
    Take,
    /// Usable later, not now (finishing its last response): left in place.
    Skip,
    /// Closed by the server: dropped.
    Drop,
}

impl<C> IdleList<C> {
    pub fn new(timeout: Duration) -> Self {
        IdleList {
            conns: Mutex::new(VecDeque::new()),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(Instant, C)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) < self.timeout
    }

    /// Hands a connection back; expired ones at the old end go first.
    pub fn check_in(&self, now: Instant, conn: C) {
        let expired = {
            let mut idle = self.lock();
            let expired = self.expired_prefix(&mut idle, now);
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push_back((now, conn));
            }
            expired
        };
        drop(expired);
    }

    /// The newest unexpired connection, taken off the list; the caller
    /// checks it further outside the lock (a check may read the socket).
    pub fn pop_newest(&self, now: Instant) -> Option<C> {
        let mut idle = self.lock();
        while let Some((since, conn)) = idle.pop_back() {
            if self.fresh(since, now) {
                return Some(conn);
            }
        }
        None
    }

    /// Looks at up to `scan` connections from the newest, under the lock,
    /// for one that `look` takes; the ones it drops and expired ones go.
    pub fn find_newest(&self, now: Instant, scan: usize, mut look: impl FnMut(&C) -> Look) -> Option<C> {
        let mut idle = self.lock();
        let (mut i, mut scanned) = (idle.len(), 0);
        while i > 0 && scanned < scan {
            i -= 1;
            let (since, conn) = &idle[i];
            if !self.fresh(*since, now) {
                idle.remove(i);
                continue;
            }
            match look(conn) {
                Look::Take => return idle.remove(i).map(|(_, c)| c),
                Look::Drop => drop(idle.remove(i)),
                Look::Skip => scanned += 1,
            }
        }
        None
    }

    /// Closes every expired connection (and those `dead` says are gone):
    /// a pool no request uses any more would otherwise keep them open.
    pub fn close_expired(&self, now: Instant, dead: impl Fn(&C) -> bool) {
        let gone: VecDeque<_> = {
            let mut idle = self.lock();
            let (keep, gone) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|(since, conn)| self.fresh(*since, now) && !dead(conn));
            *idle = keep;
            gone
        };
        drop(gone);
    }

    fn expired_prefix(&self, idle: &mut VecDeque<(Instant, C)>, now: Instant) -> Vec<(Instant, C)> {
        let n = idle
            .iter()
            .take_while(|(since, _)| !self.fresh(*since, now))
            .count();
        idle.drain(..n).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn the_newest_fresh_connection_is_reused_and_expired_ones_are_not() {
        let idle = IdleList::new(T);
        let start = Instant::now();
        idle.check_in(start, "old");
        idle.check_in(start + Duration::from_secs(5), "new");
        assert_eq!(idle.pop_newest(start + Duration::from_secs(6)), Some("new"));
        // "old" is idle for 10 s by now: expired.
        assert_eq!(idle.pop_newest(start + T), None);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn a_check_in_closes_expired_connections_at_the_old_end() {
        let idle = IdleList::new(T);
        let start = Instant::now();
        idle.check_in(start, 1);
        idle.check_in(start + Duration::from_secs(1), 2);
        idle.check_in(start + Duration::from_secs(10), 3);
        assert_eq!(idle.len(), 2, "the first, idle for 10 s, is gone");
    }

    #[test]
    fn a_scan_skips_busy_connections_and_drops_dead_ones() {
        let idle = IdleList::new(T);
        let now = Instant::now();
        for c in ["dead", "ready", "busy"] {
            idle.check_in(now, c);
        }
        let look = |c: &&str| match *c {
            "busy" => Look::Skip,
            "dead" => Look::Drop,
            _ => Look::Take,
        };
        assert_eq!(idle.find_newest(now, 8, look), Some("ready"));
        assert_eq!(idle.find_newest(now, 8, look), None);
        assert_eq!(idle.len(), 1, "only the busy one is kept");
    }

    #[test]
    fn close_expired_keeps_fresh_live_connections() {
        let idle = IdleList::new(T);
        let start = Instant::now();
        idle.check_in(start, "stale");
        idle.check_in(start + Duration::from_secs(9), "closed");
        idle.check_in(start + Duration::from_secs(9), "live");
        idle.close_expired(start + T, |c| *c == "closed");
        assert_eq!(idle.pop_newest(start + T), Some("live"));
        assert_eq!(idle.len(), 0);
    }
}
