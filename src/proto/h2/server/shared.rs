//! State a connection shares with its streams' tasks and request bodies:
//! the bytes waiting to be written, flow-control windows, and the request
//! body chunks each stream has received. One lock: every holder is brief.

use super::frame::{self, Reason};
use crate::message::BoxError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Our SETTINGS_INITIAL_WINDOW_SIZE, and the connection window we open to.
pub const RECV_WINDOW: i64 = 1 << 20;
/// Consumed bytes are returned to the peer once this many have gathered.
const RETURN_AT: u32 = (RECV_WINDOW / 2) as u32;
/// Streams stop queueing frames while this much waits to be written.
pub const OUT_HIGH: usize = 256 * 1024;
/// DATA payloads smaller than this are gathered into one chunk, so tiny
/// frames cost their bytes and not an allocation each.
const SMALL_DATA: usize = 1024;
const GATHER: usize = 16 * 1024;
/// Streams we reset while the client was still sending, remembered so that
/// frames already in flight for them are ignored rather than taken as errors.
const RECENT_RESETS: usize = 128;

/// Maps keyed by stream id. Ids are odd and strictly increasing, and at
/// most a few hundred are live, so a multiplicative hash is enough where
/// SipHash did more work on each of a stream's half-dozen lookups.
pub type ByStream<V> = HashMap<u32, V, BuildHasherDefault<StreamIdHasher>>;

#[derive(Default)]
pub struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // The product's high bits are the well mixed ones; fold them into
        // the low bits, which pick the bucket.
        let h = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

pub struct Shared(Mutex<State>);

impl Shared {
    pub fn new(state: State) -> Arc<Self> {
        Arc::new(Shared(Mutex::new(state)))
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct State {
    /// Frames waiting to be written.
    pub out: Vec<u8>,
    /// What the peer lets us send on the connection.
    pub send_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    pub initial_send_window: i64,
    pub max_frame: usize,
    /// The next header block must open with a table size update (to 0): the
    /// peer may have shrunk its table, and our encoder never uses one.
    pub announce_table_size: bool,
    pub streams: ByStream<Stream>,
    /// Request bodies still held by someone, by stream.
    pub bodies: ByStream<Inbound>,
    /// Streams whose task waits for connection window or for room in `out`.
    pub blocked: Vec<u32>,
    /// The connection's task, woken when a body returns window from elsewhere.
    pub conn_waker: Option<Waker>,
    /// What the peer may still send on the connection, and what we owe back.
    pub recv_window: i64,
    pub recv_owed: u32,
    pub recently_reset: VecDeque<u32>,
    /// DATA frames written so far: a client may PING once per frame it
    /// receives (gRPC's BDP estimate), which is not a flood.
    pub data_frames_sent: u64,
}

impl State {
    pub fn new() -> Self {
        State {
            // Grown by what is written: an idle connection holds next to nothing.
            out: Vec::new(),
            send_window: frame::DEFAULT_WINDOW,
            initial_send_window: frame::DEFAULT_WINDOW,
            max_frame: frame::MIN_MAX_FRAME,
            announce_table_size: true,
            streams: ByStream::default(),
            bodies: ByStream::default(),
            blocked: Vec::new(),
            conn_waker: None,
            recv_window: RECV_WINDOW,
            recv_owed: 0,
            recently_reset: VecDeque::new(),
            data_frames_sent: 0,
        }
    }

    /// Gives `n` received bytes back to the peer's connection window.
    pub fn return_connection_window(&mut self, n: usize) {
        self.recv_owed += n as u32;
        if self.recv_owed >= RETURN_AT {
            frame::window_update(&mut self.out, 0, self.recv_owed);
            self.recv_window += self.recv_owed as i64;
            self.recv_owed = 0;
            self.wake_connection();
        }
    }

    /// Gives `n` bytes of stream `id` back to its window once enough gathered.
    pub fn return_stream_window(&mut self, id: u32, n: usize) {
        let Some(body) = self.bodies.get_mut(&id) else {
            return;
        };
        body.owed += n as u32;
        if body.owed < RETURN_AT || body.ended {
            return;
        }
        let owed = std::mem::take(&mut body.owed);
        if let Some(stream) = self.streams.get_mut(&id).filter(|s| s.remote_open) {
            stream.recv_window += owed as i64;
            frame::window_update(&mut self.out, id, owed);
            self.wake_connection();
        }
    }

    pub fn wake_connection(&mut self) {
        if let Some(w) = &self.conn_waker {
            w.wake_by_ref();
        }
    }

    /// Wakes the streams waiting for connection window or output room.
    pub fn wake_blocked(&mut self) -> bool {
        let mut any = false;
        for id in self.blocked.drain(..) {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.queued = false;
            if let Some(w) = stream.sender.take() {
                w.wake();
                any = true;
            }
        }
        any
    }

    /// Ends a stream, whichever side reset it: its task is cancelled and
    /// its request body fails. The stream, if it was live.
    pub fn cancel_stream(&mut self, id: u32) -> Option<Stream> {
        if let Some(body) = self.bodies.get_mut(&id) {
            body.fail();
        }
        let stream = self.streams.remove(&id)?;
        stream.abort.abort();
        Some(stream)
    }

    /// Resets a stream from our side. True if the stream was live (it
    /// counts against provoked resets).
    pub fn reset_stream(&mut self, id: u32, reason: Reason) -> bool {
        frame::rst_stream(&mut self.out, id, reason);
        let Some(stream) = self.cancel_stream(id) else {
            return false;
        };
        if stream.remote_open {
            self.remember_reset(id);
        }
        true
    }

    /// Resets a stream only if it is live (an idle one must not be reset).
    pub fn reset_stream_if_live(&mut self, id: u32, reason: Reason) -> bool {
        self.streams.contains_key(&id) && self.reset_stream(id, reason)
    }

    pub fn remember_reset(&mut self, id: u32) {
        if self.recently_reset.len() == RECENT_RESETS {
            self.recently_reset.pop_front();
        }
        self.recently_reset.push_back(id);
    }
}

/// A stream the client opened and whose response is not finished.
pub struct Stream {
    pub send_window: i64,
    /// What the peer may still send on this stream.
    pub recv_window: i64,
    /// The client has not ended its side.
    pub remote_open: bool,
    /// Declared request length, and what has arrived.
    pub expected: Option<u64>,
    pub received: u64,
    pub abort: super::task::AbortStream,
    /// The stream's task, waiting for send window or output room.
    pub sender: Option<Waker>,
    /// The stream is in `State::blocked` (so it is listed once).
    pub queued: bool,
}

/// A request body's received chunks, until the body is dropped.
#[derive(Default)]
pub struct Inbound {
    chunks: VecDeque<Bytes>,
    /// Small payloads, gathered after `chunks`.
    tail: BytesMut,
    pub trailers: Option<HeaderMap>,
    pub ended: bool,
    pub failed: bool,
    pub waker: Option<Waker>,
    /// Consumed bytes (and padding) not yet returned to the stream's window.
    owed: u32,
}

impl Inbound {
    pub fn push(&mut self, data: &[u8]) {
        if data.len() < SMALL_DATA {
            self.tail.extend_from_slice(data);
            if self.tail.len() >= GATHER {
                self.chunks.push_back(self.tail.split().freeze());
            }
            return;
        }
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
        self.chunks.push_back(Bytes::copy_from_slice(data));
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.chunks
            .pop_front()
            .or_else(|| (!self.tail.is_empty()).then(|| self.tail.split().freeze()))
    }

    fn unread(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The stream was reset or the connection ended: the reader gets an error.
    pub fn fail(&mut self) {
        self.failed = true;
        self.wake();
    }
}

/// The request body the proxy reads, fed by the connection's DATA frames.
pub struct RecvBody {
    pub shared: Arc<Shared>,
    pub id: u32,
    pub length: Option<u64>,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let id = self.id;
        let mut state = self.shared.lock();
        let state = &mut *state;
        let Some(body) = state.bodies.get_mut(&id) else {
            return Poll::Ready(Some(Err("HTTP/2 stream closed".into())));
        };
        if let Some(chunk) = body.pop() {
            state.return_stream_window(id, chunk.len());
            state.return_connection_window(chunk.len());
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if body.failed {
            return Poll::Ready(Some(Err("HTTP/2 request stream reset".into())));
        }
        if body.ended {
            return Poll::Ready(body.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        if !body.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            body.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state
            .bodies
            .get(&self.id)
            .is_none_or(|b| b.ended && b.unread() == 0 && b.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        // What was received but not read goes back to the connection window;
        // the stream's own window no longer matters.
        let mut state = self.shared.lock();
        if let Some(body) = state.bodies.remove(&self.id) {
            let unread = body.unread();
            if unread > 0 {
                state.return_connection_window(unread);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_payloads_are_gathered_and_order_is_kept() {
        let mut body = Inbound::default();
        for _ in 0..40_000 {
            body.push(b"a");
        }
        body.push(&[b'b'; 2000]);
        body.push(b"c");
        // 40,000 one-byte frames take three chunks, not 40,000 allocations.
        assert_eq!(body.chunks.len(), 4);
        assert_eq!(body.unread(), 42_001);
        let mut all = Vec::new();
        while let Some(chunk) = body.pop() {
            all.extend_from_slice(&chunk);
        }
        assert_eq!(all.len(), 42_001);
        assert!(all[..40_000].iter().all(|&b| b == b'a'));
        assert!(all[40_000..42_000].iter().all(|&b| b == b'b'));
        assert_eq!(all[42_000], b'c');
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn ids_that_share_low_bits_spread_over_buckets() {
        let hasher = BuildHasherDefault::<StreamIdHasher>::default();
        // 1, 257, 513, ...: identical low 8 bits.
        let buckets: std::collections::HashSet<u64> =
            (0..64u32).map(|i| hasher.hash_one(1 + 256 * i) & 0xff).collect();
        assert!(
            buckets.len() > 32,
            "only {} of 64 ids got distinct buckets",
            buckets.len()
        );
    }
}
