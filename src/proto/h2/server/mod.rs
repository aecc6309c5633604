//! HTTP/2 client connections (RFC 9113) served by the proxy itself.
//!
//! One task per connection reads frames, runs every stream's request as a
//! future of its own inside that task, and writes whatever the streams
//! queued in one write. The streams share a lock-guarded [`shared::State`]
//! with the connection: output bytes, flow-control windows and request
//! body chunks. The encoder writes literals only and tells the peer its
//! table size is 0, so nothing depends on the peer's decoder state.
//!
//! Limits: 200 concurrent streams (more are refused), 1 MiB stream and
//! connection receive windows, 16 KiB frames, heads up to 96 KiB decoded
//! (431 above that). Malformed requests get a 400 and RST_STREAM
//! (PROTOCOL_ERROR); protocol errors end the connection with GOAWAY.
//! Clients that reset many streams in progress, make the server reset
//! them, send floods of control or empty frames, or many oversized heads
//! are cut off with ENHANCE_YOUR_CALM. A connection must send its preface
//! within the header read timeout, and one with no open stream closes after
//! the idle timeout. Draining sends GOAWAY twice, around a PING, so no
//! stream in flight is refused.

mod frame;
#[cfg(test)]
mod frame_tests;
mod frames;
mod request;
mod respond;
mod shared;
mod streams;
mod task;

pub use shared::RecvBody;

use super::hpack::Decoder;
use crate::conn::ConnContext;
use crate::io::read_buf::ReadBuffer;
use crate::metrics::ConnEvent;
use crate::proto::Handler;
use crate::time::coarse::{self as coarse_timer, coarse_now};
use frame::Reason;
use futures_util::FutureExt;
use shared::{Shared, State, RECV_WINDOW};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

const MAX_CONCURRENT_STREAMS: usize = 200;
const HEADER_TABLE_SIZE: usize = 4096;
/// A header block bigger than this before decoding ends the connection.
const MAX_BLOCK: usize = crate::message::limits::MAX_HEAD_BYTES + 16 * 1024;
/// Streams the client resets while in progress, net of those the proxy
/// served, before the connection is closed (CVE-2023-44487, "rapid reset").
const MAX_NET_RESETS: u32 = 1000;
/// Live streams the server had to reset because of what the client sent
/// (CVE-2025-8671, "made you reset"); never offset, as in h2's
/// `max_local_error_reset_streams`.
const MAX_PROVOKED_RESETS: u32 = 1024;
/// Frames that cost work but carry no request (PING, SETTINGS, PRIORITY,
/// empty DATA, unknown kinds) allowed per `CALM_WINDOW`, beyond one per
/// DATA frame sent in it; more is a flood.
const MAX_IDLE_FRAMES: u64 = 10_000;
const CALM_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// CONTINUATION frames in one header block: a client splitting a block
/// into more is stalling or flooding (MAX_BLOCK needs at most 8 full ones).
const MAX_CONTINUATIONS: u32 = 64;
/// Heads over the size limit (431) per connection: decoding each costs
/// work however small the block (an HPACK bomb), so repeats are cut off.
const MAX_OVERSIZED_HEADS: u32 = 16;
/// How long a drain waits for the answer to its PING before the final GOAWAY.
const DRAIN_PING_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The read buffer starts small and doubles as frames need (up to
/// `READ_LIMIT`): a connection that never sends a request, or thousands of
/// them, must cost little memory.
const READ_BUF: usize = 1024;
/// Room for one whole frame at the largest size we accept.
const READ_LIMIT: usize = 2 * (frame::MIN_MAX_FRAME + frame::HEAD_LEN);

/// The opaque data of the PING that times a drain's final GOAWAY.
pub(super) const DRAIN_PING: &[u8; 8] = b"meshdrn!";
/// How long, and how much, a connection closing with GOAWAY still reads.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// A connection error: GOAWAY with this code, then close.
struct ConnError(Reason, &'static str);

struct PendingBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    continuations: u32,
    depends_on_itself: bool,
}

/// Frames that did no useful work, counted over a window of coarse time.
struct IdleFrames {
    since: std::time::Instant,
    count: u64,
    /// `State::data_frames_sent` when the window began.
    sent_before: u64,
}

struct Conn<I, H: Handler> {
    io: I,
    input: ReadBuffer,
    write: Vec<u8>,
    written: usize,
    shared: Arc<Shared>,
    tasks: task::StreamTasks<task::StreamFuture<H>>,
    /// What each proxied stream's request is handed to.
    handler: H,
    decoder: Decoder,
    ctx: Arc<ConnContext>,
    /// Highest stream id the client has used.
    last_stream: u32,
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<PendingBlock>,
    preface_done: bool,
    settings_seen: bool,
    /// Set once GOAWAY is sent: no new streams are served.
    goaway_sent: bool,
    /// The client sent GOAWAY.
    peer_done: bool,
    /// A connection error was sent: write what is queued, then close.
    closing: bool,
    /// The client closed the connection or it failed: nothing more to say.
    gone: bool,
    /// Draining: the first GOAWAY and its PING are out, the final GOAWAY
    /// follows the PING's answer (RFC 9113, 6.8).
    drain_pinged: bool,
    net_resets: u32,
    provoked_resets: u32,
    oversized_heads: u32,
    idle_frames: IdleFrames,
    /// No stream is open: the connection counts as idle for eviction and
    /// for its idle timeout.
    idle: bool,
}

pub async fn serve<I, H>(
    io: I,
    ctx: Arc<ConnContext>,
    preface_timeout: std::time::Duration,
    draining: watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut state = State::new();
    frame::settings(
        &mut state.out,
        &[
            (
                frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                MAX_CONCURRENT_STREAMS as u32,
            ),
            (frame::SETTINGS_INITIAL_WINDOW_SIZE, RECV_WINDOW as u32),
            (
                frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                crate::message::limits::MAX_HEAD_BYTES as u32,
            ),
        ],
    );
    frame::window_update(&mut state.out, 0, (RECV_WINDOW - frame::DEFAULT_WINDOW) as u32);
    let mut conn = Conn {
        io,
        input: ReadBuffer::new(READ_BUF),
        write: Vec::new(),
        written: 0,
        shared: Shared::new(state),
        tasks: task::StreamTasks::new(),
        handler,
        decoder: Decoder::new(HEADER_TABLE_SIZE),
        ctx,
        last_stream: 0,
        pending: None,
        preface_done: false,
        settings_seen: false,
        goaway_sent: false,
        peer_done: false,
        closing: false,
        gone: false,
        drain_pinged: false,
        net_resets: 0,
        provoked_resets: 0,
        oversized_heads: 0,
        idle_frames: IdleFrames {
            since: coarse_now(),
            count: 0,
            sent_before: 0,
        },
        idle: true,
    };
    let mut drain_watch = draining;
    let mut drained = std::pin::pin!(crate::shared::drained(&mut drain_watch));
    let seat = conn.ctx.seat.clone();
    let mut evicted = std::pin::pin!(seat.evicted());
    // Until the preface and SETTINGS arrive, then whenever no stream is open.
    let mut idle_limit = coarse_timer::sleep_until(coarse_now() + preface_timeout);
    let idle_timeout = conn.ctx.idle_timeout;
    let mut waiting_preface = true;
    // Armed when a drain starts: the final GOAWAY goes out when the PING is
    // answered or when this fires, whichever is first.
    let mut ping_wait: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        let quiet = !conn.drain_pinged && !conn.goaway_sent;
        if quiet && (drained.as_mut().poll(cx).is_ready() || evicted.as_mut().poll(cx).is_ready()) {
            conn.begin_drain();
            ping_wait = Some(Box::pin(tokio::time::sleep(DRAIN_PING_WAIT)));
        }
        if let Some(wait) = ping_wait.as_mut().filter(|_| !conn.goaway_sent) {
            if wait.as_mut().poll(cx).is_ready() {
                conn.send_goaway(Reason::NoError);
            }
        }
        let driven = conn.poll_drive(cx);
        if driven.is_ready() {
            return driven;
        }
        if waiting_preface && conn.settings_seen {
            waiting_preface = false;
            idle_limit.reset(coarse_now() + idle_timeout);
        }
        let idle = conn.tasks.is_empty();
        if idle != conn.idle {
            conn.idle = idle;
            match idle {
                true => {
                    seat.idle();
                    idle_limit.reset(coarse_now() + idle_timeout);
                }
                false => {
                    seat.busy();
                    idle_limit.pause();
                }
            }
        }
        if (conn.idle || waiting_preface) && !conn.goaway_sent && idle_limit.poll_unpin(cx).is_ready() {
            if waiting_preface {
                conn.ctx.tcp.count(ConnEvent::PrefaceTimeout);
                return Poll::Ready(());
            }
            // Idle too long: a clean goodbye; no stream is lost.
            conn.send_goaway(Reason::NoError);
            return conn.poll_drive(cx);
        }
        Poll::Pending
    })
    .await;
    if !conn.gone {
        conn.linger().await;
    }
    // Dropping the connection drops its streams' tasks, which cancels them.
    let mut state = conn.shared.lock();
    state.streams.clear();
    state.bodies.values_mut().for_each(shared::Inbound::fail);
}

impl<I: AsyncRead + AsyncWrite + Unpin, H: Handler> Conn<I, H> {
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut again = false;
            // Reading pauses while much output waits (a client that sends
            // PINGs and reads nothing); a flush below the limit resumes it.
            let read_paused = {
                let mut state = self.shared.lock();
                if !state.conn_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.conn_waker = Some(cx.waker().clone());
                }
                self.closing || state.out.len() >= 2 * shared::OUT_HIGH
            };
            if !read_paused {
                match self.input.poll_read_from(&mut self.io, READ_LIMIT, cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        if let Err(ConnError(reason, why)) = self.process_input() {
                            self.fail(reason, why);
                        }
                        again = true;
                    }
                    // The client is gone (or sent more than a frame can hold).
                    Poll::Ready(_) => {
                        self.gone = true;
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            let net_resets = &mut self.net_resets;
            self.tasks.poll(cx, |proxied| {
                // Only streams the proxy served offset resets: the
                // server's own quick 400s must not buy a client resets.
                if proxied {
                    *net_resets = net_resets.saturating_sub(1);
                }
            });
            match self.poll_flush(cx) {
                Poll::Ready(Ok(woke)) => {
                    again |= woke;
                    again |= read_paused && !self.closing;
                }
                Poll::Ready(Err(_)) => {
                    self.gone = true;
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
            if self.finished() {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Closing with a GOAWAY: closes our side, then reads what the client
    /// still sends for a moment, so closing with unread input does not
    /// reset the connection and lose the GOAWAY before the client reads it.
    async fn linger(&mut self) {
        use tokio::io::AsyncWriteExt;
        // The shutdown is inside the limit too: a TLS close_notify waits for
        // a client that may have stopped reading.
        let _ = tokio::time::timeout(LINGER, async {
            if self.io.shutdown().await.is_err() {
                return;
            }
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                self.input.consume(self.input.unread().len());
                match poll_fn(|cx| self.input.poll_read_from(&mut self.io, READ_LIMIT, cx)).await {
                    Ok(n) if n > 0 => discarded += n,
                    _ => return,
                }
            }
        })
        .await;
    }

    /// Nothing left to do: after GOAWAY (either way) with no streams left,
    /// or after a connection error, once everything queued is written.
    fn finished(&self) -> bool {
        // The flags first: a serving connection does not take the lock here.
        let ending = self.closing || self.goaway_sent || self.peer_done;
        if !ending || self.written != self.write.len() {
            return false;
        }
        let state = self.shared.lock();
        state.out.is_empty() && (self.closing || (state.streams.is_empty() && self.tasks.is_empty()))
    }

    /// Writes what the streams queued; Ok(true) if that woke blocked streams.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut woke = false;
        loop {
            if self.written == self.write.len() {
                self.write.clear();
                self.written = 0;
                let mut state = self.shared.lock();
                if state.out.is_empty() {
                    drop(state);
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    return Poll::Ready(Ok(woke));
                }
                let was_full = state.out.len() >= shared::OUT_HIGH;
                std::mem::swap(&mut self.write, &mut state.out);
                if was_full {
                    woke |= state.wake_blocked();
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
    }

    pub(super) fn fail(&mut self, reason: Reason, why: &str) {
        if reason != Reason::NoError {
            self.ctx.tcp.count(match reason {
                Reason::EnhanceYourCalm => ConnEvent::Http2Abuse,
                _ => ConnEvent::Http2Protocol,
            });
            crate::throttled!(
                "{}: HTTP/2 connection error from {}: {why} ({reason:?})",
                self.ctx.listener_name,
                self.ctx.peer
            );
        }
        // Streams end with the connection: none may write after its GOAWAY,
        // not even one woken by the frame that broke the connection.
        {
            let mut state = self.shared.lock();
            let live: Vec<u32> = state.streams.keys().copied().collect();
            live.into_iter().for_each(|id| drop(state.cancel_stream(id)));
        }
        self.send_goaway(reason);
        self.closing = true;
    }

    /// Tells the client to stop opening streams without refusing those
    /// already on the way: GOAWAY with the highest possible id and a PING;
    /// the final GOAWAY, naming the last stream served, follows its answer.
    fn begin_drain(&mut self) {
        let mut state = self.shared.lock();
        frame::goaway(&mut state.out, frame::MAX_WINDOW as u32, Reason::NoError);
        frame::ping(&mut state.out, DRAIN_PING);
        drop(state);
        self.drain_pinged = true;
    }

    pub(super) fn send_goaway(&mut self, reason: Reason) {
        if !self.goaway_sent {
            frame::goaway(&mut self.shared.lock().out, self.last_stream, reason);
            self.goaway_sent = true;
        }
    }
}
