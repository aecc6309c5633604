//! A coarse timer for hyper's HTTP/1.1 header-read timeout.
//!
//! hyper arms that timeout for every request on a keep-alive connection. With
//! tokio's timer each arm is a timer-wheel insert and remove under the
//! driver's lock, and sometimes an eventfd write to wake the driver: about
//! 0.6 µs per request (bench/PROFILE.md). A 30 s limit needs no such
//! precision, so here a sleep is a deadline in a per-thread list that one
//! ticker task per worker checks once per `TICK`.
//!
//! A sleep fires up to one `TICK` late. A sleep polled on a thread without a
//! ticker (never the case in a worker) would not fire.

use hyper::rt::{Sleep, Timer};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a worker's ticker checks deadlines.
pub const TICK: Duration = Duration::from_secs(1);

static NEXT_LIST_ID: AtomicU64 = AtomicU64::new(1);

/// The sleeps waiting on one thread. Slots are reused through `free`.
struct Waiting {
    id: u64,
    slots: Vec<Option<(Instant, Waker)>>,
    free: Vec<usize>,
}

thread_local! {
    static WAITING: RefCell<Waiting> = RefCell::new(Waiting {
        id: NEXT_LIST_ID.fetch_add(1, Relaxed),
        slots: Vec::new(),
        free: Vec::new(),
    });
    /// The time of this thread's last tick; sleeps compare against it.
    static TICKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// hyper's `Timer`, backed by the per-thread lists.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(sleep_until(deadline))
    }
}

/// A coarse sleep, unboxed, for the proxy's own HTTP/1.1 server.
pub fn sleep_until(deadline: Instant) -> CoarseSleep {
    CoarseSleep { deadline, slot: None }
}

/// Where a sleep is registered: which thread's list, and which slot.
#[derive(Clone, Copy)]
struct Slot {
    list: u64,
    index: usize,
}

pub struct CoarseSleep {
    deadline: Instant,
    slot: Option<Slot>,
}

impl CoarseSleep {
    /// Moves the deadline but keeps the registration, for a connection that
    /// waits again and again. The list learns the new deadline at the next
    /// poll; until then the old one may wake the task once, harmlessly.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Leaves the list until polled again, so a finished wait does not wake
    /// its task at every tick while the task is busy with something else.
    pub fn pause(&mut self) {
        if let Some(slot) = self.slot.take() {
            let _ = WAITING.try_with(|w| {
                let mut w = w.borrow_mut();
                if w.id == slot.list {
                    w.slots[slot.index] = None;
                    w.free.push(slot.index);
                }
            });
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let now = TICKED_AT.with(Cell::get);
        if now.is_some_and(|now| now >= this.deadline) {
            this.pause();
            return Poll::Ready(());
        }
        WAITING.with(|w| {
            let mut w = w.borrow_mut();
            match this.slot {
                Some(slot) if slot.list == w.id => {
                    if let Some((deadline, waker)) = &mut w.slots[slot.index] {
                        *deadline = this.deadline;
                        waker.clone_from(cx.waker());
                    }
                }
                _ => {
                    let entry = Some((this.deadline, cx.waker().clone()));
                    let index = match w.free.pop() {
                        Some(i) => {
                            w.slots[i] = entry;
                            i
                        }
                        None => {
                            w.slots.push(entry);
                            w.slots.len() - 1
                        }
                    };
                    this.slot = Some(Slot { list: w.id, index });
                }
            }
        });
        Poll::Pending
    }
}

impl Sleep for CoarseSleep {}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.pause();
    }
}

/// This thread's time as of its last tick (at most `TICK` old), or the
/// precise time on a thread without a ticker. For timestamps that need no
/// precision, such as when a pooled connection went idle.
pub fn coarse_now() -> Instant {
    TICKED_AT.with(Cell::get).unwrap_or_else(Instant::now)
}

/// The latest tick of any worker, in nanoseconds since the process's first
/// look at this clock: coarse like `coarse_now`, but one clock for every
/// thread, so times taken on different workers can be ordered.
static LATEST_TICK: AtomicU64 = AtomicU64::new(0);

fn since_start(now: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    now.saturating_duration_since(start).as_nanos() as u64
}

/// Coarse nanoseconds on the process-wide clock (see `LATEST_TICK`); the
/// precise time where no worker has ticked yet.
pub fn shared_coarse_nanos() -> u64 {
    match LATEST_TICK.load(Relaxed) {
        0 => since_start(Instant::now()),
        latest => latest,
    }
}

/// Wakes this thread's expired sleeps once per `TICK`; runs for the life of
/// the worker's runtime.
pub async fn run_ticker() {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick(Instant::now());
    }
}

fn tick(now: Instant) {
    TICKED_AT.with(|t| t.set(Some(now)));
    LATEST_TICK.fetch_max(since_start(now), Relaxed);
    // Collected first: waking must not happen while the list is borrowed.
    let expired: Vec<Waker> = WAITING.with(|w| {
        let w = w.borrow();
        let slots = w.slots.iter().flatten();
        slots
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, waker)| waker.clone())
            .collect()
    });
    expired.into_iter().for_each(Waker::wake);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn poll(sleep: &mut CoarseSleep, count: &Arc<Count>) -> Poll<()> {
        let waker = Waker::from(count.clone());
        Pin::new(sleep).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn fires_only_after_a_tick_past_its_deadline() {
        let start = Instant::now();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut sleep = CoarseSleep {
            deadline: start + Duration::from_secs(30),
            slot: None,
        };
        tick(start);
        assert!(poll(&mut sleep, &count).is_pending());
        tick(start + Duration::from_secs(29));
        assert_eq!(count.0.load(Relaxed), 0, "woken before its deadline");
        tick(start + Duration::from_secs(31));
        assert_eq!(count.0.load(Relaxed), 1);
        assert!(poll(&mut sleep, &count).is_ready());
        assert!(sleep.slot.is_none(), "a fired sleep leaves the list");
    }

    #[test]
    fn dropped_sleeps_free_their_slots_for_reuse() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let far = Instant::now() + Duration::from_secs(3600);
        let mut first = CoarseSleep {
            deadline: far,
            slot: None,
        };
        let _ = poll(&mut first, &count);
        let used = first.slot.map(|s| s.index);
        drop(first);
        let mut second = CoarseSleep {
            deadline: far,
            slot: None,
        };
        let _ = poll(&mut second, &count);
        assert_eq!(second.slot.map(|s| s.index), used);
        let live = WAITING.with(|w| w.borrow().slots.iter().flatten().count());
        assert_eq!(live, 1);
    }
}
