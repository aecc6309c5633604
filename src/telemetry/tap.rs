//! Tap: live request summaries for whoever asks, filtered by route, service
//! and authority. With no one tapping, a request pays one atomic load; a slow
//! reader never slows a request: its queue is bounded, and what does not fit
//! is dropped and counted.

use super::Summary;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a reader lets summaries gather after the first.
const GATHER: Duration = Duration::from_millis(20);

/// At most this many taps at once: each costs every request a summary.
pub const MAX_TAPS: usize = 16;

/// What a tap wants; `None` matches anything. Equality, as the names are
/// written in the config (authority without its port is also accepted).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub route: Option<String>,
    pub service: Option<String>,
    pub authority: Option<String>,
}

impl Filter {
    fn matches(&self, s: &Summary) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let authority = self.authority.as_deref().is_none_or(|want| {
            let host = s.authority.rsplit_once(':').map_or(&*s.authority, |(h, _)| h);
            want.eq_ignore_ascii_case(&s.authority) || want.eq_ignore_ascii_case(host)
        });
        same(&self.route, s.route_name()) && same(&self.service, s.service_name()) && authority
    }
}

struct Subscriber {
    filter: Filter,
    queue: SyncSender<Summary>,
    dropped: AtomicU64,
}

/// Everyone tapping one proxy.
#[derive(Default)]
pub struct Taps {
    count: AtomicUsize,
    list: ArcSwap<Vec<Arc<Subscriber>>>,
    /// Serializes subscribing and leaving (not publishing).
    changes: Mutex<()>,
    dropped: AtomicU64,
}

impl Taps {
    #[inline]
    pub fn active(&self) -> bool {
        self.count.load(Relaxed) != 0
    }

    /// Summaries dropped because a tap's reader fell behind, over all taps.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// A new tap with room for `capacity` summaries; None past `MAX_TAPS`.
    pub fn open(self: &Arc<Self>, filter: Filter, capacity: usize) -> Option<Tap> {
        let _changing = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let list = self.list.load();
        if list.len() >= MAX_TAPS {
            return None;
        }
        let (queue, summaries) = sync_channel(capacity.max(1));
        let subscriber = Arc::new(Subscriber {
            filter,
            queue,
            dropped: AtomicU64::new(0),
        });
        let mut next = Vec::clone(&list);
        next.push(subscriber.clone());
        self.count.store(next.len(), Relaxed);
        self.list.store(Arc::new(next));
        Some(Tap {
            taps: self.clone(),
            subscriber,
            summaries: Mutex::new(summaries),
        })
    }

    fn close(&self, gone: &Arc<Subscriber>) {
        let _changing = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::clone(&self.list.load());
        next.retain(|s| !Arc::ptr_eq(s, gone));
        self.count.store(next.len(), Relaxed);
        self.list.store(Arc::new(next));
    }

    pub fn publish(&self, summary: &Summary) {
        for subscriber in self.list.load().iter() {
            if !subscriber.filter.matches(summary) {
                continue;
            }
            match subscriber.queue.try_send(summary.clone()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    subscriber.dropped.fetch_add(1, Relaxed);
                    self.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// One reader's tap; it stops when dropped.
pub struct Tap {
    taps: Arc<Taps>,
    subscriber: Arc<Subscriber>,
    summaries: Mutex<Receiver<Summary>>,
}

impl Tap {
    /// The summaries queued now, waiting up to `timeout` for the first; at
    /// most `max`. Empty when none came in time.
    pub fn next_batch(&self, timeout: Duration, max: usize) -> Vec<Summary> {
        let summaries = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Vec::new();
        match summaries.recv_timeout(timeout) {
            Ok(s) => batch.push(s),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return batch,
        }
        // Summaries gather for a moment after the first: a reader woken for
        // each would cost the proxy's core a context switch per request.
        std::thread::sleep(GATHER.min(timeout));
        while batch.len() < max.max(1) {
            match summaries.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        batch
    }

    /// Summaries this tap missed because it read too slowly.
    pub fn dropped(&self) -> u64 {
        self.subscriber.dropped.load(Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.taps.close(&self.subscriber);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(route: &str, service: &str, authority: &str) -> Summary {
        Summary {
            route: Some(route.into()).filter(|r: &Arc<str>| !r.is_empty()),
            service: Some(service.into()).filter(|s: &Arc<str>| !s.is_empty()),
            authority: authority.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_tap_gets_what_its_filter_matches_and_leaves_when_dropped() {
        let taps = Arc::new(Taps::default());
        assert!(!taps.active());
        let filter = Filter {
            service: Some("web".into()),
            authority: Some("web.local".into()),
            ..Default::default()
        };
        let tap = taps.open(filter, 8).expect("room for a tap");
        assert!(taps.active());
        taps.publish(&summary("a", "web", "web.local:8080"));
        taps.publish(&summary("a", "api", "web.local"));
        taps.publish(&summary("b", "web", "other.local"));
        let got = tap.next_batch(Duration::from_secs(5), 10);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].authority, "web.local:8080");
        drop(tap);
        assert!(!taps.active());
        assert!(taps.list.load().is_empty());
    }

    #[test]
    fn a_full_tap_drops_and_counts_and_the_others_still_get_theirs() {
        let taps = Arc::new(Taps::default());
        let slow = taps.open(Filter::default(), 2).unwrap();
        let fast = taps.open(Filter::default(), 100).unwrap();
        for _ in 0..5 {
            taps.publish(&summary("a", "web", "x"));
        }
        assert_eq!((slow.dropped(), fast.dropped(), taps.dropped()), (3, 0, 3));
        assert_eq!(slow.next_batch(Duration::ZERO, 100).len(), 2);
        assert_eq!(fast.next_batch(Duration::ZERO, 100).len(), 5);
        assert!(
            fast.next_batch(Duration::ZERO, 100).is_empty(),
            "nothing more came"
        );
    }

    #[test]
    fn taps_are_limited() {
        let taps = Arc::new(Taps::default());
        let open: Vec<_> = (0..MAX_TAPS)
            .map(|_| taps.open(Filter::default(), 1).unwrap())
            .collect();
        assert!(taps.open(Filter::default(), 1).is_none());
        drop(open);
        assert!(taps.open(Filter::default(), 1).is_some());
    }
}
