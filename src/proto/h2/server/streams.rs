//! Header blocks: a new stream's request (run as a task of the
//! connection), or the trailers that end a request body.

use super::frame::{self, Head, Reason};
use super::frames::unpad;
use super::request::Fields;
use super::shared::{Inbound, Stream, RECV_WINDOW};
use super::task::{self, Answer};
use super::{
    Conn, ConnError, PendingBlock, RecvBody, MAX_BLOCK, MAX_CONCURRENT_STREAMS, MAX_CONTINUATIONS,
    MAX_OVERSIZED_HEADS,
};
use crate::message::error_response;
use crate::proto::h2::hpack;
use crate::proto::Handler;
use crate::proto::RequestBody;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

impl<I: AsyncRead + AsyncWrite + Unpin, H: Handler> Conn<I, H> {
    pub(super) fn on_headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::Protocol, "HEADERS on stream 0"));
        }
        let mut block = unpad(head, payload)?;
        let mut depends_on_itself = false;
        if head.flags & frame::PRIORITY_FLAG != 0 {
            let priority = block
                .get(..5)
                .ok_or(ConnError(Reason::FrameSize, "HEADERS too short for its priority"))?;
            depends_on_itself = frame::u32_at(priority) & 0x7fff_ffff == head.stream;
            block = &block[5..];
        }
        let end_stream = head.flags & frame::END_STREAM != 0;
        if head.flags & frame::END_HEADERS == 0 {
            self.pending = Some(PendingBlock {
                stream: head.stream,
                end_stream,
                block: block.to_vec(),
                continuations: 0,
                depends_on_itself,
            });
            return Ok(());
        }
        self.on_header_block(head.stream, end_stream, block, depends_on_itself)
    }

    pub(super) fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(ConnError(Reason::Protocol, "CONTINUATION without HEADERS"));
        };
        pending.block.extend_from_slice(payload);
        pending.continuations += 1;
        if pending.block.len() > MAX_BLOCK {
            return Err(ConnError(Reason::EnhanceYourCalm, "header block too large"));
        }
        // Empty or tiny CONTINUATION frames make work without progress.
        if pending.continuations > MAX_CONTINUATIONS {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "header block in too many frames",
            ));
        }
        if head.flags & frame::END_HEADERS != 0 {
            let p = self.pending.take().expect("checked above");
            return self.on_header_block(p.stream, p.end_stream, &p.block, p.depends_on_itself);
        }
        Ok(())
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        depends_on_itself: bool,
    ) -> Result<(), ConnError> {
        let mut fields = Fields::new();
        match self.decoder.decode(block, |name, value| fields.push(name, value)) {
            Ok(()) => {}
            Err(hpack::Error::Compression) => return Err(ConnError(Reason::Compression, "bad header block")),
            Err(_) => fields.problem = fields.problem.or(Some("invalid header field")),
        }
        if fields.too_large() {
            self.oversized_heads += 1;
            if self.oversized_heads > MAX_OVERSIZED_HEADS {
                return Err(ConnError(
                    Reason::EnhanceYourCalm,
                    "too many oversized header blocks",
                ));
            }
        }
        if depends_on_itself {
            // Decoded first, so the HPACK table stays in step (RFC 9113, 5.3.1).
            if id > self.last_stream {
                self.last_stream = id;
            }
            return self.reset_for_error(id, Reason::Protocol);
        }
        // Only an id above the last reserves a slot (trailers do not; a
        // stream then refused leaves its slot free for the next). Before the
        // lock: making room may drop aborted streams' futures, and their
        // request bodies lock the state when dropped.
        let abort = (id > self.last_stream).then(|| self.tasks.next_abort());
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if let Some(stream) = state.streams.get_mut(&id) {
            // Trailers: they end the request body.
            let trailers = match (stream.remote_open, end_stream) {
                (false, _) => Err(Reason::StreamClosed),
                (true, false) => Err(Reason::Protocol),
                (true, true) => fields.into_trailers().map_err(|_| Reason::Protocol),
            };
            let trailers = trailers.and_then(|t| match stream.expected {
                Some(n) if n != stream.received => Err(Reason::Protocol),
                _ => Ok(t),
            });
            let live = match trailers {
                Ok(trailers) => {
                    stream.remote_open = false;
                    if let Some(body) = state.bodies.get_mut(&id) {
                        body.trailers = Some(trailers);
                        body.ended = true;
                        body.wake();
                    }
                    false
                }
                Err(reason) => state.reset_stream(id, reason),
            };
            drop(guard);
            return self.count_provoked_reset(live);
        }
        if id <= self.last_stream {
            // Frames may still be in flight for a stream we reset; any other
            // lower id is one the client reused or opened out of order (5.1.1).
            if state.recently_reset.contains(&id) {
                return Ok(());
            }
            return Err(ConnError(Reason::Protocol, "stream id not above the last one"));
        }
        if id.is_multiple_of(2) {
            return Err(ConnError(
                Reason::Protocol,
                "client opened an even-numbered stream",
            ));
        }
        self.last_stream = id;
        // Past a GOAWAY either way, or over the limit: refused, so the client
        // knows it may send the request again elsewhere.
        let over = state.streams.len() >= MAX_CONCURRENT_STREAMS;
        if self.goaway_sent || self.peer_done || over {
            state.reset_stream(id, Reason::RefusedStream);
            if !end_stream {
                state.remember_reset(id);
            }
            return Ok(());
        }
        let length = fields.content_length();
        state.streams.insert(
            id,
            Stream {
                send_window: state.initial_send_window,
                recv_window: RECV_WINDOW,
                remote_open: !end_stream,
                expected: length.ok().flatten(),
                received: 0,
                abort: abort.expect("ids not above the last one returned above"),
                sender: None,
                queued: false,
            },
        );
        // The body's entry lives exactly as long as the body: a request that
        // is answered without it (400, 431) drops it, which frees the entry.
        let body = (!end_stream).then(|| {
            state.bodies.insert(id, Inbound::default());
            RecvBody {
                shared: self.shared.clone(),
                id,
                length: length.ok().flatten(),
            }
        });
        // Released first: dropping an unused body locks.
        drop(guard);
        let answer = self.answer(body, fields, length);
        if matches!(answer, Answer::Malformed(_)) {
            self.count_provoked_reset(true)?;
        }
        let proxied = matches!(answer, Answer::Proxy(_));
        let (handler, shared, ctx) = (self.handler, self.shared.clone(), self.ctx.clone());
        self.tasks
            .start(|| task::stream_future(handler, shared, id, answer, ctx), proxied);
        Ok(())
    }

    /// What the stream is answered with: the proxy's handling, or the
    /// server's own answer to a request it cannot pass on.
    fn answer(
        &self,
        body: Option<RecvBody>,
        fields: Fields,
        length: Result<Option<u64>, &'static str>,
    ) -> Answer {
        if fields.too_large() {
            return Answer::Own(error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            ));
        }
        let request = length.and_then(|length| {
            if body.is_none() && length.is_some_and(|n| n > 0) {
                return Err("content-length on a request without a body");
            }
            fields.into_request(body.map_or(RequestBody::Empty, RequestBody::H2))
        });
        match request {
            Ok(req) => Answer::Proxy(req),
            Err("CONNECT") => Answer::Own(error_response(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not served over HTTP/2",
            )),
            Err(problem) => {
                crate::throttled!(
                    "{}: malformed HTTP/2 request from {}: {problem}",
                    self.ctx.listener_name,
                    self.ctx.peer
                );
                // A 400 to say why, then RST_STREAM(PROTOCOL_ERROR) as
                // RFC 9113 (8.1.1) asks for a malformed request.
                Answer::Malformed(error_response(StatusCode::BAD_REQUEST, problem))
            }
        }
    }
}
