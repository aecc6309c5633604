//! A bounded queue of records (packed request summaries) that one background
//! thread drains in batches. A request appends its record's bytes under a
//! lock held for a copy; the drainer swaps the whole buffer out. So a record
//! costs no allocation, no channel slot and no free on another thread, and
//! the drainer is woken only when it sleeps with nothing to do, or once a
//! batch is full. Each record goes in behind its length (4 bytes); `records`
//! reads them back.

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

/// A record's first allocation: most fit (a summary packs into about 150
/// bytes); one swollen past `4 * RECORD_CAPACITY` by a long path is not kept.
const RECORD_CAPACITY: usize = 512;

/// The length in front of each record.
const LENGTH: usize = 4;

thread_local! {
    /// Where a worker packs a record before queueing it: the queue's lock is
    /// held for a copy, not for packing, and one record can go to two queues.
    static RECORD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(RECORD_CAPACITY));
}

/// Runs `f` with this thread's record buffer, empty; for a record to push.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    RECORD.with_borrow_mut(|out| {
        out.clear();
        let result = f(out);
        if out.capacity() > 4 * RECORD_CAPACITY {
            *out = Vec::with_capacity(RECORD_CAPACITY);
        }
        result
    })
}

/// The records of what a drainer took, in the order they were pushed.
pub fn records(taken: &[u8]) -> Records<'_> {
    Records(taken)
}

pub struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (length, rest) = self.0.split_first_chunk::<LENGTH>()?;
        let len = (u32::from_le_bytes(*length) as usize).min(rest.len());
        let (record, rest) = rest.split_at(len);
        self.0 = rest;
        Some(record)
    }
}

/// What a drainer took besides the records.
pub struct Taken {
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
        let Ok(len) = u32::try_from(record.len()) else {
            return false;
        };
        state.bytes.extend_from_slice(&len.to_le_bytes());
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
        state.records = 0;
        Taken { closed: state.closed }
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
        assert!(!taken.closed);
        assert_eq!(records(&out).collect::<Vec<_>>(), [b"a\n", b"b\n"]);
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
                spool.take(&mut out);
                records(&out).count()
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
        assert!(taken.closed);
        assert_eq!(records(&out).collect::<Vec<_>>(), [b"last"]);
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
                let mut got = Vec::new();
                let mut batch = Vec::new();
                loop {
                    spool.wait(64, usize::MAX, Instant::now() + Duration::from_millis(1));
                    let taken = spool.take(&mut batch);
                    records(&batch).for_each(|r| got.extend_from_slice(r));
                    batch.clear();
                    if taken.closed {
                        return got;
                    }
                }
            })
        };
        let refused: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
        spool.close();
        let got = drainer.join().unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&got).unwrap().lines().collect();
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
        spool.take(&mut out);
        assert_eq!(records(&out).count(), 1);
    }
}
