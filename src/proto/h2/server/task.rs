//! A stream's task: the future that answers it, in a heap slot the
//! connection reuses for later streams. Every stream's future has one type
//! (made by [`stream_future`]), so a finished slot can take the next one in
//! place: no allocation of the 1.6 KB state per stream, which is too big for
//! glibc's per-thread cache and made it consolidate its free lists.

use super::respond::Respond;
use super::shared::Shared;
use crate::conn::ConnContext;
use crate::message::ProxyBody;
use crate::proto::Handler;
use crate::proto::RequestBody;
use futures_util::future::Either;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::future::Ready;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

/// Finished slots whose heap state is kept per connection (about 1.7 KB
/// each); more are freed.
const SPARE_SLOTS: usize = 8;

/// What a stream is answered with: the proxy's handling of its request, or
/// an answer the server makes itself (431, 501), or a 400 for a malformed
/// request, which is then reset.
pub enum Answer {
    Proxy(Request<RequestBody>),
    Own(Response<ProxyBody>),
    Malformed(Response<ProxyBody>),
}

/// Marks a response whose stream is reset with PROTOCOL_ERROR once its
/// head is written.
#[derive(Clone, Copy)]
pub struct ResetAfterHead;

/// One stream's future: the handler's, or an answer the server made itself.
pub type StreamFuture<H> =
    Respond<Either<<H as Handler>::Future, Ready<Result<Response<ProxyBody>, Infallible>>>>;

/// A plain function, not an `async fn`, so the request is not kept twice.
pub fn stream_future<H: Handler>(
    handler: H,
    shared: Arc<Shared>,
    id: u32,
    answer: Answer,
    ctx: Arc<ConnContext>,
) -> StreamFuture<H> {
    let answer = match answer {
        Answer::Proxy(req) => Either::Left(handler.call(req, ctx)),
        Answer::Own(resp) => Either::Right(std::future::ready(Ok(resp))),
        Answer::Malformed(mut resp) => {
            resp.extensions_mut().insert(ResetAfterHead);
            Either::Right(std::future::ready(Ok(resp)))
        }
    };
    Respond::new(shared, id, answer)
}

/// The futures of a connection's streams, polled by the connection's task.
/// Each lives in a slot that later streams reuse: its heap state, its
/// waker and its abort handle. (`FuturesUnordered` and `Abortable` allocate
/// a task node and an abort handle per stream.)
pub struct StreamTasks<F> {
    slots: Vec<TaskSlot<F>>,
    /// Slots with no future that kept their heap state (at most
    /// `SPARE_SLOTS`), used first; then those that did not.
    free_kept: Vec<usize>,
    free_bare: Vec<usize>,
    queue: Arc<WakeQueue>,
    /// The woken slots being polled; kept so that taking them allocates nothing.
    batch: Vec<usize>,
    live: usize,
    next_generation: u64,
}

struct TaskSlot<F> {
    /// None once freed beyond the spares kept.
    state: Option<Pin<Box<Option<F>>>>,
    node: Arc<Node>,
    waker: Waker,
    /// Tells this stream's future from earlier ones in the slot.
    generation: u64,
    proxied: bool,
}

/// Slots woken since the connection last polled, and the connection's waker.
#[derive(Default)]
struct WakeQueue(Mutex<(Vec<usize>, Option<Waker>)>);

impl WakeQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<usize>, Option<Waker>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Node {
    index: usize,
    queue: Arc<WakeQueue>,
    queued: AtomicBool,
    /// The generation whose abort was asked for.
    aborted: AtomicU64,
}

impl Wake for Node {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut queue = self.queue.lock();
        queue.0.push(self.index);
        // The connection takes the whole list when polled: only the first
        // slot woken since then needs to wake it.
        let conn = (queue.0.len() == 1).then(|| queue.1.clone()).flatten();
        drop(queue);
        if let Some(conn) = conn {
            conn.wake();
        }
    }
}

/// Cancels one stream's future (it is dropped, unpolled, by the
/// connection); a handle kept past its stream does nothing.
pub struct AbortStream {
    node: Arc<Node>,
    generation: u64,
}

impl AbortStream {
    pub fn abort(&self) {
        self.node.aborted.store(self.generation, Ordering::Release);
        self.node.wake_by_ref();
    }

    #[cfg(test)]
    pub fn unattached() -> Self {
        let queue = Arc::new(WakeQueue::default());
        AbortStream {
            node: Arc::new(Node {
                index: 0,
                queue,
                queued: AtomicBool::new(false),
                aborted: AtomicU64::new(0),
            }),
            generation: 1,
        }
    }
}

impl<F: Future<Output = ()>> StreamTasks<F> {
    pub fn new() -> Self {
        StreamTasks {
            slots: Vec::new(),
            free_kept: Vec::new(),
            free_bare: Vec::new(),
            queue: Arc::new(WakeQueue::default()),
            batch: Vec::new(),
            live: 0,
            next_generation: 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The handle that cancels the future [`start`](Self::start) runs next.
    pub fn next_abort(&mut self) -> AbortStream {
        let index = self.next_free();
        AbortStream {
            node: self.slots[index].node.clone(),
            generation: self.next_generation,
        }
    }

    /// The slot `start` takes next: one with kept state if there is one.
    fn next_free(&mut self) -> usize {
        if self.free_kept.is_empty() && self.free_bare.is_empty() {
            // Aborted streams give their slots back at the next poll; a
            // client that opens and resets many in one read must not grow
            // the table, so they are given back now.
            self.reap_aborted();
        }
        if let Some(index) = self.free_kept.last().or(self.free_bare.last()) {
            return *index;
        }
        let index = self.slots.len();
        let node = Arc::new(Node {
            index,
            queue: self.queue.clone(),
            queued: AtomicBool::new(false),
            aborted: AtomicU64::new(0),
        });
        self.slots.push(TaskSlot {
            state: None,
            waker: Waker::from(node.clone()),
            node,
            generation: 0,
            proxied: false,
        });
        self.free_bare.push(index);
        index
    }

    /// Runs a stream's future; `proxied` comes back when it finishes. The
    /// future is made here rather than passed in: each move of its 1.6 KB
    /// state is a copy.
    pub fn start(&mut self, make: impl FnOnce() -> F, proxied: bool) {
        let index = self.next_free();
        let popped = self.free_kept.pop().or_else(|| self.free_bare.pop());
        debug_assert_eq!(popped, Some(index));
        let slot = &mut self.slots[index];
        match &mut slot.state {
            Some(state) => state.set(Some(make())),
            None => slot.state = Some(Box::pin(Some(make()))),
        }
        slot.generation = self.next_generation;
        slot.proxied = proxied;
        self.next_generation += 1;
        self.live += 1;
        // Listed for its first poll without waking the connection, which
        // polls its tasks after it starts them. A slot reaped after an abort
        // is still listed: listing it twice would poll it twice.
        if !slot.node.queued.swap(true, Ordering::AcqRel) {
            self.queue.lock().0.push(index);
        }
    }

    /// Drops the futures of aborted streams, unpolled. Aborting wakes a
    /// stream, so they are all in the queue.
    fn reap_aborted(&mut self) {
        // Copied out first: a future's drop may wake others, which locks the queue.
        self.batch.extend_from_slice(&self.queue.lock().0);
        for at in 0..self.batch.len() {
            let index = self.batch[at];
            let slot = &self.slots[index];
            let running = slot.state.as_ref().is_some_and(|state| state.is_some());
            if running && slot.node.aborted.load(Ordering::Acquire) == slot.generation {
                self.release(index);
            }
        }
        self.batch.clear();
    }

    /// Ends the future in `index` (dropped now, not when the slot is reused).
    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(state) = slot.state.as_mut() {
            state.set(None);
        }
        if self.free_kept.len() < SPARE_SLOTS {
            self.free_kept.push(index);
        } else {
            slot.state = None;
            self.free_bare.push(index);
        }
        self.live -= 1;
    }

    /// Polls the woken futures; `finished(proxied)` for each that ends
    /// (not for those aborted).
    pub fn poll(&mut self, cx: &mut Context<'_>, mut finished: impl FnMut(bool)) {
        {
            let mut queue = self.queue.lock();
            if !queue.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                queue.1 = Some(cx.waker().clone());
            }
            std::mem::swap(&mut queue.0, &mut self.batch);
        }
        for at in 0..self.batch.len() {
            let index = self.batch[at];
            let slot = &mut self.slots[index];
            // Cleared first: a wake while it is polled lists it again.
            slot.node.queued.swap(false, Ordering::AcqRel);
            let Some(state) = slot.state.as_mut() else {
                continue;
            };
            let Some(future) = state.as_mut().as_pin_mut() else {
                continue;
            };
            let aborted = slot.node.aborted.load(Ordering::Acquire) == slot.generation;
            if !aborted && future.poll(&mut Context::from_waker(&slot.waker)).is_pending() {
                continue;
            }
            if !aborted {
                finished(slot.proxied);
            }
            self.release(index);
        }
        self.batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<H: Handler>(_: H) -> usize {
        std::mem::size_of::<StreamFuture<H>>()
    }

    /// A future that finishes on its `n`th poll, counting its polls.
    struct Polls {
        left: u32,
        polled: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Future for Polls {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<()> {
            self.polled.fetch_add(1, Ordering::Relaxed);
            self.left -= 1;
            if self.left == 0 {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[test]
    fn streams_run_finish_and_abort_and_stale_aborts_miss_later_streams() {
        let mut tasks = StreamTasks::new();
        let mut cx = Context::from_waker(Waker::noop());
        let counter = || Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (a, b) = (counter(), counter());
        let abort_a = tasks.next_abort();
        tasks.start(
            || Polls {
                left: 2,
                polled: a.clone(),
            },
            true,
        );
        let abort_b = tasks.next_abort();
        tasks.start(
            || Polls {
                left: 100,
                polled: b.clone(),
            },
            false,
        );
        let mut done = Vec::new();
        tasks.poll(&mut cx, |p| done.push(p));
        assert_eq!((a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)), (1, 1));
        abort_b.abort();
        tasks.poll(&mut cx, |p| done.push(p));
        // a finished on its second poll; b was dropped without being polled.
        assert_eq!((a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)), (2, 1));
        assert_eq!(done, [true]);
        assert!(tasks.is_empty());
        // Both slots are reused; the old handles no longer reach them.
        let c = counter();
        tasks.start(
            || Polls {
                left: 3,
                polled: c.clone(),
            },
            true,
        );
        tasks.start(
            || Polls {
                left: 3,
                polled: c.clone(),
            },
            true,
        );
        assert_eq!(tasks.slots.len(), 2, "a slot was not reused");
        abort_a.abort();
        abort_b.abort();
        for _ in 0..3 {
            tasks.poll(&mut cx, |p| done.push(p));
        }
        assert_eq!(c.load(Ordering::Relaxed), 6);
        assert_eq!(done, [true, true, true]);
        assert!(tasks.is_empty());
        // Nothing woken, nothing polled.
        tasks.poll(&mut cx, |_| panic!("polled an idle slot"));
    }

    fn pending() -> Polls {
        Polls {
            left: u32::MAX,
            polled: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        }
    }

    #[test]
    fn streams_opened_and_aborted_between_polls_do_not_grow_the_table() {
        let mut tasks = StreamTasks::new();
        for _ in 0..1000 {
            let abort = tasks.next_abort();
            tasks.start(pending, true);
            abort.abort();
        }
        assert!(tasks.slots.len() <= 2, "{} slots", tasks.slots.len());
        // Nor the wake queue: reusing a reaped slot must not list it again.
        let queued = tasks.queue.lock().0.len();
        assert!(queued <= 2, "{queued} queue entries");
        tasks.poll(&mut Context::from_waker(Waker::noop()), |_| {
            panic!("an aborted stream finished")
        });
        assert!(tasks.is_empty());
    }

    #[test]
    fn kept_state_is_used_first_after_a_burst() {
        let mut tasks = StreamTasks::new();
        let mut cx = Context::from_waker(Waker::noop());
        let aborts: Vec<_> = (0..20)
            .map(|_| {
                let abort = tasks.next_abort();
                tasks.start(pending, true);
                abort
            })
            .collect();
        aborts.iter().for_each(AbortStream::abort);
        tasks.poll(&mut cx, |_| ());
        assert!(tasks.is_empty());
        assert_eq!(tasks.free_kept.len(), SPARE_SLOTS);
        for _ in 0..SPARE_SLOTS {
            let next = tasks.next_free();
            assert!(
                tasks.slots[next].state.is_some(),
                "a slot without kept state was chosen"
            );
            tasks.start(pending, true);
        }
        assert!(tasks.free_kept.is_empty());
    }

    /// A stream's future is moved into its slot whole, so it should be the
    /// handler's future plus a little: an `async fn` here kept it twice (4 KB).
    #[test]
    fn a_streams_future_holds_the_handlers_once() {
        let size = output_size(crate::proxy::handle);
        assert!(size <= 1664 + 64, "a stream's future grew to {size} bytes");
    }
}
