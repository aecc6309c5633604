//! A bounded queue of encoded records (access log lines, spans) that one
//! background thread drains in batches. A request appends its record's bytes
//! under a lock held for a copy; the drainer swaps the whole buffer out. So a
//! record costs no allocation, no channel slot and no free on another thread,
//! and the drainer is woken only when it sleeps with nothing to do, or once
//! a batch is full.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Spool {
    state: Mutex<State>,
    /// Wakes a drainer that waits on a thread of its own.
    ready: Condvar,
    /// Wakes a drainer that waits in an async task.
    notify: tokio::sync::Notify,
    /// Most records queued; past it, new ones are refused.
    capacity: usize,
}

struct State {
    bytes: Vec<u8>,
    records: usize,
    closed: bool,
    /// The drainer waits until this many records are queued (0: it does not
    /// wait), or `wake_bytes` bytes.
    wake_records: usize,
    wake_bytes: usize,
}

impl State {
    /// Whether a drainer waiting for `records` records or `bytes` bytes is done.
    fn enough(&self, records: usize, bytes: usize) -> bool {
        self.closed || self.records >= records.max(1) || self.bytes.len() >= bytes
    }
}

/// A record's first allocation: most fit (an access log line is about 350
/// bytes); one swollen past `4 * RECORD_CAPACITY` by a long path is not kept.
const RECORD_CAPACITY: usize = 512;

thread_local! {
    /// Where a worker formats its records before queueing them: the queue's
    /// lock is held for a copy, not for formatting.
    static RECORD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(RECORD_CAPACITY));
}

/// What a drainer took besides the bytes.
pub struct Taken {
    pub records: usize,
    /// The spool is closed: nothing more will come.
    pub closed: bool,
}

impl Spool {
    pub fn new(capacity: usize) -> Spool {
        Spool {
            state: Mutex::new(State {
                bytes: Vec::new(),
                records: 0,
                closed: false,
                wake_records: 0,
                wake_bytes: 0,
            }),
            ready: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues one record; false when the spool is full or closed (the
    /// caller counts it dropped). Never waits for the drainer.
    pub fn push(&self, record: &[u8]) -> bool {
        let mut state = self.lock();
        if state.closed || state.records >= self.capacity {
            return false;
        }
        state.bytes.extend_from_slice(record);
        state.records += 1;
        let wake = state.wake_records != 0
            && (state.records >= state.wake_records || state.bytes.len() >= state.wake_bytes);
        if wake {
            state.wake_records = 0;
            drop(state);
            self.wake();
        }
        true
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues the record `write` formats into this thread's buffer (it
    /// returns where in it the record starts), as `push` does.
    pub fn push_formatted(&self, write: impl FnOnce(&mut Vec<u8>) -> usize) -> bool {
        RECORD.with_borrow_mut(|out| {
            out.clear();
            let start = write(out);
            let queued = self.push(&out[start..]);
            if out.capacity() > 4 * RECORD_CAPACITY {
                *out = Vec::with_capacity(RECORD_CAPACITY);
            }
            queued
        })
    }

    /// Refuses new records and wakes the drainer to take the last ones.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Waits on this thread until `records` records or `bytes` bytes are
    /// queued, the spool closes, or `until` passes; then how many are queued.
    pub fn wait(&self, records: usize, bytes: usize, until: Instant) -> usize {
        let mut state = self.lock();
        while !state.enough(records, bytes) {
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            state.wake_records = records.max(1);
            state.wake_bytes = bytes;
            state = match self.ready.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.wake_records = 0;
        state.records
    }

    /// As `wait`, in an async task, for at most `within`.
    pub async fn ready(&self, records: usize, bytes: usize, within: Duration) -> usize {
        let until = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if state.enough(records, bytes) {
                    state.wake_records = 0;
                    return state.records;
                }
                state.wake_records = records.max(1);
                state.wake_bytes = bytes;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let mut state = self.lock();
                state.wake_records = 0;
                return state.records;
            }
        }
    }

    /// Takes everything queued into `into`, which must be empty; the spool
    /// keeps `into`'s old allocation for what comes next.
    pub fn take(&self, into: &mut Vec<u8>) -> Taken {
        debug_assert!(into.is_empty());
        let mut state = self.lock();
        std::mem::swap(&mut state.bytes, into);
        let records = std::mem::take(&mut state.records);
        Taken {
            records,
            closed: state.closed,
        }
    }

    fn wake(&self) {
        self.ready.notify_one();
        self.notify.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves whole records at worst.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn records_past_the_capacity_are_refused_until_taken() {
        let spool = Spool::new(2);
        assert!(spool.push(b"a\n"));
        assert!(spool.push(b"b\n"));
        assert!(!spool.push(b"c\n"));
        let mut out = Vec::new();
        let taken = spool.take(&mut out);
        assert_eq!(
            (taken.records, taken.closed, &out[..]),
            (2, false, &b"a\nb\n"[..])
        );
        assert!(spool.push(b"d\n"));
    }

    #[test]
    fn a_waiting_drainer_is_woken_by_the_record_it_waits_for() {
        let spool = Arc::new(Spool::new(16));
        let waiter = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                spool.wait(2, usize::MAX, Instant::now() + Duration::from_secs(30));
                let mut out = Vec::new();
                spool.take(&mut out).records
            })
        };
        // Whether the waiter is asleep yet or not, two records end its wait.
        spool.push(b"1");
        spool.push(b"2");
        assert_eq!(waiter.join().unwrap(), 2);
    }

    #[test]
    fn a_full_batch_of_bytes_wakes_the_drainer() {
        let spool = Arc::new(Spool::new(16));
        let waiter = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.wait(100, 4, Instant::now() + Duration::from_secs(30)))
        };
        spool.push(b"12345");
        assert_eq!(waiter.join().unwrap(), 1);
    }

    #[test]
    fn closing_refuses_records_and_ends_a_wait() {
        let spool = Arc::new(Spool::new(16));
        spool.push(b"last");
        let waiter = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.wait(100, usize::MAX, Instant::now() + Duration::from_secs(30)))
        };
        spool.close();
        assert_eq!(waiter.join().unwrap(), 1);
        assert!(!spool.push(b"late"));
        let mut out = Vec::new();
        let taken = spool.take(&mut out);
        assert_eq!((taken.records, taken.closed, &out[..]), (1, true, &b"last"[..]));
    }

    #[test]
    fn records_pushed_from_many_threads_arrive_whole_and_in_each_threads_order() {
        const THREADS: usize = 4;
        const EACH: usize = 20_000;
        let spool = Arc::new(Spool::new(1024));
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    let mut refused = 0;
                    for n in 0..EACH {
                        if !spool.push(format!("{t} {n:06}\n").as_bytes()) {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        let drainer = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let (mut got, mut taken_records) = (Vec::new(), 0);
                let mut batch = Vec::new();
                loop {
                    spool.wait(64, usize::MAX, Instant::now() + Duration::from_millis(1));
                    let taken = spool.take(&mut batch);
                    taken_records += taken.records;
                    got.extend_from_slice(&batch);
                    batch.clear();
                    if taken.closed {
                        return (got, taken_records);
                    }
                }
            })
        };
        let refused: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
        spool.close();
        let (got, taken_records) = drainer.join().unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&got).unwrap().lines().collect();
        assert_eq!(lines.len(), taken_records);
        assert_eq!(lines.len() + refused, THREADS * EACH);
        let mut last = [None::<usize>; THREADS];
        for line in lines {
            let (t, n) = line.split_once(' ').unwrap();
            let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
            assert!(
                last[t].is_none_or(|prev| prev < n),
                "thread {t}: {n} after {:?}",
                last[t]
            );
            last[t] = Some(n);
        }
    }

    #[test]
    fn an_async_drainer_is_woken_and_its_wait_ends_at_its_timeout() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let spool = Arc::new(Spool::new(16));
        runtime.block_on(async {
            // Nothing queued: the wait ends at its timeout.
            spool.ready(1, usize::MAX, Duration::from_millis(10)).await;
            let pusher = {
                let spool = spool.clone();
                std::thread::spawn(move || spool.push(b"x"))
            };
            spool.ready(1, usize::MAX, Duration::from_secs(30)).await;
            assert!(pusher.join().unwrap());
        });
        let mut out = Vec::new();
        assert_eq!(spool.take(&mut out).records, 1);
    }
}
