//! Writing a stream's response: the head as HEADERS (and CONTINUATION), the
//! body as DATA within the peer's flow-control windows, trailers as a final
//! HEADERS.

use super::frame::{self, Reason};
use super::shared::{self, Shared, State};
use super::task::ResetAfterHead;
use crate::message::headers::is_connection_specific;
use crate::message::ProxyBody;
use crate::proto::h2::hpack;
use bytes::{Buf, Bytes};
use http::header::{CONTENT_LENGTH, DATE, TE};
use http::{HeaderMap, Response};
use hyper::body::Body;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pin_project! {
    /// Answers a stream with what `answer` resolves to: a state machine
    /// rather than an `async fn`, which would keep the 1.6 KB answer future
    /// twice (as its argument and as the future it awaits).
    pub struct Respond<F> {
        shared: Arc<Shared>,
        id: u32,
        #[pin]
        phase: Phase<F>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F> {
        Answering { #[pin] answer: F },
        /// `data` is what the body gave and the windows have not taken yet.
        Sending { body: ProxyBody, data: Bytes, end: bool },
        Done,
    }
}

impl<F> Respond<F> {
    pub fn new(shared: Arc<Shared>, id: u32, answer: F) -> Self {
        Respond {
            shared,
            id,
            phase: Phase::Answering { answer },
        }
    }
}

impl<F: Future<Output = Result<Response<ProxyBody>, Infallible>>> Future for Respond<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let (shared, id) = (&**this.shared, *this.id);
        loop {
            match this.phase.as_mut().project() {
                PhaseProj::Answering { answer } => {
                    let Ok(response) = ready!(answer.poll(cx));
                    let (mut parts, body) = response.into_parts();
                    let status = parts.status.as_u16();
                    let reset_after = parts.extensions.get::<ResetAfterHead>().is_some();
                    // 1xx, 204 and 304 carry no content (RFC 9110, 15), and
                    // 1xx and 204 no length either.
                    let no_content = status < 200 || status == 204 || status == 304;
                    if status < 200 || status == 204 {
                        parts.headers.remove(CONTENT_LENGTH);
                    }
                    let end = (no_content || body.is_end_stream()) && !reset_after;
                    let mut state = shared.lock();
                    // Not live: the stream was reset while the answer was made.
                    let live = state.streams.contains_key(&id);
                    if live {
                        write_head(&mut state, id, Some(status), &parts.headers, end);
                        if reset_after {
                            state.reset_stream(id, Reason::Protocol);
                        } else if end {
                            finish(&mut state, id);
                        }
                    }
                    drop(state);
                    crate::message::headers::recycle(parts.headers);
                    if !live || end || reset_after {
                        this.phase.set(Phase::Done);
                        return Poll::Ready(());
                    }
                    this.phase.set(Phase::Sending {
                        body,
                        data: Bytes::new(),
                        end: false,
                    });
                }
                PhaseProj::Sending { body, data, end } => {
                    if !data.is_empty() || *end {
                        let sent = ready!(poll_send_data(shared, id, data, *end, cx));
                        if !sent || *end {
                            this.phase.set(Phase::Done);
                            return Poll::Ready(());
                        }
                        continue;
                    }
                    match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                        None => *end = true,
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(chunk) => {
                                *end = body.is_end_stream();
                                *data = chunk;
                            }
                            Err(frame) => {
                                let trailers = frame.into_trailers().unwrap_or_default();
                                let mut state = shared.lock();
                                if state.streams.contains_key(&id) {
                                    write_head(&mut state, id, None, &trailers, true);
                                    finish(&mut state, id);
                                }
                                drop(state);
                                this.phase.set(Phase::Done);
                                return Poll::Ready(());
                            }
                        },
                        Some(Err(_)) => {
                            // The upstream failed mid-body: the client must not
                            // take a truncated body for a whole one.
                            shared.lock().reset_stream(id, Reason::Internal);
                            this.phase.set(Phase::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                PhaseProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Writes as much of `data` as the windows allow; Ready(true) once all of
/// it is queued, Ready(false) if the stream is gone.
fn poll_send_data(shared: &Shared, id: u32, data: &mut Bytes, end: bool, cx: &mut Context<'_>) -> Poll<bool> {
    let mut state = shared.lock();
    let state = &mut *state;
    loop {
        let Some(stream) = state.streams.get_mut(&id) else {
            return Poll::Ready(false);
        };
        let window = stream.send_window.min(state.send_window);
        if !data.is_empty() && (window <= 0 || state.out.len() >= shared::OUT_HIGH) {
            stream.sender = Some(cx.waker().clone());
            // The stream's own window is reopened by its WINDOW_UPDATE; the
            // connection's window and the output by a wake of all waiting.
            if stream.send_window > 0 && !stream.queued {
                stream.queued = true;
                state.blocked.push(id);
            }
            return Poll::Pending;
        }
        let n = data.len().min(window.max(0) as usize).min(state.max_frame);
        stream.send_window -= n as i64;
        state.send_window -= n as i64;
        let last = n == data.len();
        let flags = if last && end { frame::END_STREAM } else { 0 };
        frame::write_head(&mut state.out, n, frame::DATA, flags, id);
        state.data_frames_sent += 1;
        state.out.extend_from_slice(&data[..n]);
        data.advance(n);
        if last {
            if end {
                finish(state, id);
            }
            return Poll::Ready(true);
        }
    }
}

/// The response is complete. If the client is still sending, it is told to
/// stop (RFC 9113, 8.1: a complete response may precede the request's end).
fn finish(state: &mut State, id: u32) {
    if state.streams.get(&id).is_some_and(|s| s.remote_open) {
        state.reset_stream(id, Reason::NoError);
    } else {
        state.streams.remove(&id);
    }
}

/// A response head (with `status`) or trailers (without), with `date`
/// added to a head that lacks one, as hyper's server does.
fn write_head(state: &mut State, id: u32, status: Option<u16>, headers: &HeaderMap, end: bool) {
    let out = &mut state.out;
    let start = out.len();
    out.extend_from_slice(&[0; frame::HEAD_LEN]);
    if std::mem::take(&mut state.announce_table_size) {
        out.push(0x20); // dynamic table size update: 0
    }
    let mut has_date = false;
    if let Some(status) = status {
        hpack::encode_status(status, out);
    }
    for (name, value) in headers {
        // The proxy strips these from upstream answers; its own answers and
        // plugins' are not stripped, and HTTP/2 forbids them outright.
        // Trailers never carry framing (RFC 9110, 6.5.1).
        if is_connection_specific(name) || name == TE || (status.is_none() && name == CONTENT_LENGTH) {
            continue;
        }
        has_date |= name == DATE;
        hpack::encode_field(name.as_str(), value.as_bytes(), out);
    }
    if status.is_some() && !has_date {
        crate::message::date::with_date(|date| hpack::encode_field("date", date, out));
    }
    let len = out.len() - start - frame::HEAD_LEN;
    let flags = frame::END_HEADERS | if end { frame::END_STREAM } else { 0 };
    if len <= state.max_frame {
        out[start..start + frame::HEAD_LEN].copy_from_slice(&frame::head_bytes(
            len,
            frame::HEADERS,
            flags,
            id,
        ));
    } else {
        let block = out.split_off(start + frame::HEAD_LEN);
        out.truncate(start);
        frame::header_block(out, id, &block, end, state.max_frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h2::server::shared::Stream;

    #[test]
    fn a_stream_waiting_for_the_connection_window_is_listed_once() {
        let shared = Shared::new(State::new());
        let abort = crate::proto::h2::server::task::AbortStream::unattached();
        {
            let mut state = shared.lock();
            state.send_window = 0;
            let stream = Stream {
                send_window: 1000,
                recv_window: 0,
                remote_open: false,
                expected: None,
                received: 0,
                abort,
                sender: None,
                queued: false,
            };
            state.streams.insert(1, stream);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut data = Bytes::from_static(b"hello");
        for _ in 0..3 {
            assert!(poll_send_data(&shared, 1, &mut data, true, &mut cx).is_pending());
        }
        assert_eq!(shared.lock().blocked, [1]);
        shared.lock().wake_blocked();
        assert!(poll_send_data(&shared, 1, &mut data, true, &mut cx).is_pending());
        assert_eq!(shared.lock().blocked, [1]);
    }
}
