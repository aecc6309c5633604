//! How many connections a listener holds, and which make room for new ones.
//!
//! Every open connection has a [`Seat`] in its listener's [`Admission`].
//! A connection says when it is idle (no request in progress) with one
//! relaxed store, so keeping track costs nothing per request. Past
//! `max_connections`, the connection idle the longest is asked to close
//! (HTTP/1.1 closes between requests, HTTP/2 sends GOAWAY); when none is
//! idle, the new connection is refused. Descriptor exhaustion (EMFILE)
//! evicts the same way.

use crate::time::coarse::shared_coarse_nanos;
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// One connection's place in its listener.
pub struct Seat {
    /// When the connection last became idle, on the coarse process-wide
    /// clock; `BUSY` while a request is in progress.
    idle_since: AtomicU64,
    /// Set once the listener wants the connection closed. A flag and an
    /// atomic waker, not a `Notify`: the connection polls this at every
    /// wait, and `Notify` takes a lock per poll.
    evict: AtomicBool,
    waker: AtomicWaker,
}

const BUSY: u64 = u64::MAX;

impl Seat {
    pub fn busy(&self) {
        self.idle_since.store(BUSY, Relaxed);
    }

    /// Coarse, on one clock for all workers (ties go to the older
    /// connection): the order of idleness needs no precision.
    pub fn idle(&self) {
        self.idle_at(shared_coarse_nanos());
    }

    fn idle_at(&self, nanos: u64) {
        self.idle_since.store(nanos.min(BUSY - 1), Relaxed);
    }

    /// Resolves when the listener wants this connection closed.
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted(self)
    }

    fn ask_to_close(&self) {
        self.evict.store(true, Release);
        self.waker.wake();
    }
}

pub struct Evicted<'a>(&'a Seat);

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let seat = self.0;
        if seat.evict.load(Acquire) {
            return Poll::Ready(());
        }
        seat.waker.register(cx.waker());
        // Asked between the check and the registration: seen now.
        match seat.evict.load(Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

pub struct Admission {
    max: usize,
    seats: Mutex<SeatMap>,
}

#[derive(Default)]
struct SeatMap {
    next: u64,
    open: HashMap<u64, Arc<Seat>>,
}

/// A connection admitted; leaving frees its seat.
pub struct Admitted {
    admission: Arc<Admission>,
    key: u64,
    pub seat: Arc<Seat>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.lock().open.remove(&self.key);
    }
}

/// What admitting one more connection took.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Room,
    /// An idle connection was asked to close to make room.
    Evicted,
}

impl Admission {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Admission {
            max: max.max(1),
            seats: Mutex::new(SeatMap::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeatMap> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// A seat for a new connection (idle until it says otherwise), or None
    /// when the listener is full of busy connections.
    pub fn admit(self: &Arc<Self>) -> Option<(Admitted, Admit)> {
        let mut seats = self.lock();
        let mut taken = Admit::Room;
        if seats.open.len() >= self.max {
            if !evict_longest_idle(&mut seats.open) {
                return None;
            }
            taken = Admit::Evicted;
        }
        let key = seats.next;
        seats.next += 1;
        let seat = Arc::new(Seat {
            idle_since: AtomicU64::new(0),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        seat.idle();
        seats.open.insert(key, seat.clone());
        drop(seats);
        let admitted = Admitted {
            admission: self.clone(),
            key,
            seat,
        };
        Some((admitted, taken))
    }

    /// Asks the longest-idle connection to close (descriptors ran out);
    /// false if none is idle.
    pub fn evict_one(&self) -> bool {
        evict_longest_idle(&mut self.lock().open)
    }
}

/// An evicted seat leaves the map at once, so it is asked only once and
/// the next eviction picks another connection.
fn evict_longest_idle(open: &mut HashMap<u64, Arc<Seat>>) -> bool {
    let oldest = open
        .iter()
        .map(|(key, seat)| (seat.idle_since.load(Relaxed), *key))
        .filter(|(since, _)| *since != BUSY)
        .min();
    let Some((_, key)) = oldest else {
        return false;
    };
    if let Some(seat) = open.remove(&key) {
        // The flag stays set: the connection sees it whenever it next waits.
        seat.ask_to_close();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_longest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let admission = Admission::new(2);
        let (a, first) = admission.admit().unwrap();
        let (b, _) = admission.admit().unwrap();
        assert_eq!(first, Admit::Room);
        let later = shared_coarse_nanos() + 5_000_000_000;
        a.seat.idle_at(later);
        b.seat.idle_at(later - 1_000_000_000);
        let (c, took) = admission.admit().unwrap();
        assert_eq!(took, Admit::Evicted);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let asked = |seat: &Seat| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(50), seat.evicted())
                    .await
                    .is_ok()
            })
        };
        assert!(
            asked(&b.seat),
            "the longer idle connection was not asked to close"
        );
        assert!(!asked(&a.seat));
        // Now everyone is busy: a new connection is refused.
        a.seat.busy();
        c.seat.busy();
        assert!(admission.admit().is_none());
        assert!(!admission.evict_one());
        drop(c);
        assert_eq!(admission.open(), 1);
        assert!(admission.admit().is_some());
    }
}
