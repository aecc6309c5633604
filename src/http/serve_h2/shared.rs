//! State a connection shares with its streams' tasks and request bodies:
//! the bytes waiting to be written, flow-control windows, and the request
//! body chunks each stream has received. One lock: every holder is brief.

use super::frame::{self, Reason};
use crate::http::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Our SETTINGS_INITIAL_WINDOW_SIZE, and the connection window we open to.
pub const RECV_WINDOW: i64 = 1 << 20;
/// Consumed bytes are returned to the peer once this many have gathered.
const RETURN_AT: u32 = (RECV_WINDOW / 2) as u32;
/// Streams stop queueing frames while this much waits to be written.
pub const OUT_HIGH: usize = 256 * 1024;

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
    pub streams: HashMap<u32, Stream>,
    /// Request bodies still held by someone, by stream.
    pub bodies: HashMap<u32, Inbound>,
    /// Stream tasks waiting for window or for room in `out`.
    pub blocked: Vec<Waker>,
    /// The connection's task, woken when a body returns window from elsewhere.
    pub conn_waker: Option<Waker>,
    /// What the peer may still send on the connection, and what we owe back.
    pub recv_window: i64,
    pub recv_owed: u32,
}

impl State {
    pub fn new() -> Self {
        State {
            out: Vec::with_capacity(16 * 1024),
            send_window: frame::DEFAULT_WINDOW,
            initial_send_window: frame::DEFAULT_WINDOW,
            max_frame: frame::MIN_MAX_FRAME,
            streams: HashMap::new(),
            bodies: HashMap::new(),
            blocked: Vec::new(),
            conn_waker: None,
            recv_window: RECV_WINDOW,
            recv_owed: 0,
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

    pub fn wake_connection(&mut self) {
        if let Some(w) = &self.conn_waker {
            w.wake_by_ref();
        }
    }

    pub fn wake_blocked(&mut self) -> bool {
        let any = !self.blocked.is_empty();
        for w in self.blocked.drain(..) {
            w.wake();
        }
        any
    }

    /// Ends a stream's request body with an error (the stream was reset).
    pub fn fail_body(&mut self, id: u32) {
        if let Some(body) = self.bodies.get_mut(&id) {
            body.failed = true;
            if let Some(w) = body.waker.take() {
                w.wake();
            }
        }
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
    pub abort: futures_util::future::AbortHandle,
}

/// A request body's received chunks, until the body is dropped.
#[derive(Default)]
pub struct Inbound {
    pub chunks: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub ended: bool,
    pub failed: bool,
    pub waker: Option<Waker>,
    /// Consumed bytes not yet returned to the stream's window.
    owed: u32,
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
        if let Some(chunk) = body.chunks.pop_front() {
            body.owed += chunk.len() as u32;
            let owed = if body.owed >= RETURN_AT && !body.ended {
                std::mem::take(&mut body.owed)
            } else {
                0
            };
            if let Some(stream) = state.streams.get_mut(&id).filter(|_| owed > 0) {
                stream.recv_window += owed as i64;
                frame::window_update(&mut state.out, id, owed);
                state.wake_connection();
            }
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
            .is_none_or(|b| b.ended && b.chunks.is_empty() && b.trailers.is_none())
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
            let unread: usize = body.chunks.iter().map(Bytes::len).sum();
            if unread > 0 {
                state.return_connection_window(unread);
            }
        }
    }
}

/// Resets a stream from our side: its task is cancelled, its body fails.
pub fn reset_stream(state: &mut State, id: u32, reason: Reason) {
    frame::rst_stream(&mut state.out, id, reason);
    if let Some(stream) = state.streams.remove(&id) {
        stream.abort.abort();
    }
    state.fail_body(id);
}
