//! The HTTP/2 connections to one upstream endpoint.
//!
//! One connection per endpoint let a single client stall a service: its
//! stalled streams filled the upstream's SETTINGS_MAX_CONCURRENT_STREAMS,
//! and every later request queued behind them. So each connection carries
//! at most as many streams as the upstream allows (read from its first
//! SETTINGS) and at most `STREAMS_PER_CONNECTION`; past that another
//! connection is opened, up to `CONNECTIONS_PER_ENDPOINT`. Each stream
//! holds a [`StreamSlot`] until its response body is done.
//!
//! The connection window is the sum of its streams' windows, so a stream
//! whose client stopped reading holds back only its own window's worth.

use super::error::UpstreamError;
use crate::message::ProxyBody;
use hyper::client::conn::http2::SendRequest;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Our own cap on streams per upstream connection, below common servers'
/// limits (nginx 128, hyper 200, Go 250).
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Connections per endpoint; past them a stream queues on the least loaded.
pub const CONNECTIONS_PER_ENDPOINT: usize = 16;
/// Receive window per upstream stream: what one stalled client can hold
/// buffered per stream. The connection's window covers all its streams.
pub const STREAM_WINDOW: u32 = 256 * 1024;
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * STREAMS_PER_CONNECTION as u32;

#[derive(Clone)]
struct Conn {
    generation: u64,
    sender: SendRequest<ProxyBody>,
    /// Streams in flight on this connection.
    streams: Arc<AtomicUsize>,
    /// How many it may carry: the upstream's limit once known.
    limit: Arc<AtomicUsize>,
}

/// A stream's place on its connection; given back when dropped.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A connection to send one request on, and the stream's slot.
pub struct Lease {
    pub generation: u64,
    pub sender: SendRequest<ProxyBody>,
    pub slot: StreamSlot,
}

#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<Vec<Conn>>,
    made: AtomicU64,
    /// Held while a connection is made, so a burst opens one, not many.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The least loaded open connection, if it has room (or `any` is set).
    fn pick(&self, any: bool) -> Option<Lease> {
        let mut conns = self.lock();
        conns.retain(|c| !c.sender.is_closed());
        let conn = conns.iter().min_by_key(|c| c.streams.load(Relaxed))?;
        if !any && conn.streams.load(Relaxed) >= conn.limit.load(Relaxed) {
            return None;
        }
        conn.streams.fetch_add(1, Relaxed);
        Some(Lease {
            generation: conn.generation,
            sender: conn.sender.clone(),
            slot: StreamSlot(conn.streams.clone()),
        })
    }

    /// A stream on an open connection with room, without waiting.
    pub fn try_lease(&self) -> Option<Lease> {
        self.pick(false)
    }

    /// A connection with room for a stream, opening one with `connect` when
    /// all are full and there may be more.
    pub async fn lease<F>(&self, connect: impl FnOnce(Arc<AtomicUsize>) -> F) -> Result<Lease, UpstreamError>
    where
        F: Future<Output = Result<SendRequest<ProxyBody>, UpstreamError>>,
    {
        if let Some(lease) = self.pick(false) {
            return Ok(lease);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(lease) = self.pick(false) {
            return Ok(lease); // another request connected meanwhile
        }
        if self.lock().len() >= CONNECTIONS_PER_ENDPOINT {
            if let Some(lease) = self.pick(true) {
                return Ok(lease);
            }
        }
        let limit = Arc::new(AtomicUsize::new(STREAMS_PER_CONNECTION));
        let sender = connect(limit.clone()).await?;
        let conn = Conn {
            generation: self.made.fetch_add(1, Relaxed),
            sender,
            streams: Arc::new(AtomicUsize::new(1)),
            limit,
        };
        let lease = Lease {
            generation: conn.generation,
            sender: conn.sender.clone(),
            slot: StreamSlot(conn.streams.clone()),
        };
        self.lock().push(conn);
        Ok(lease)
    }

    /// Drops a connection a request saw fail (and not a newer one).
    pub fn forget(&self, generation: u64) {
        self.lock().retain(|c| c.generation != generation);
    }
}

/// Reads the upstream's first SETTINGS frame as it passes, for its
/// SETTINGS_MAX_CONCURRENT_STREAMS; after that, bytes only pass through.
/// Whether the first bytes were a SETTINGS frame at all tells whether the
/// upstream speaks HTTP/2 (an HTTP/1.1 server answers the preface with a 400).
pub struct SettingsSniffer<I> {
    io: I,
    /// The first frame's bytes so far; None once it has been read.
    seen: Option<Vec<u8>>,
    limit: Arc<AtomicUsize>,
    verdict: Option<oneshot::Sender<bool>>,
}

impl<I> SettingsSniffer<I> {
    /// `verdict` hears whether the upstream's first frame was SETTINGS.
    pub fn new(io: I, limit: Arc<AtomicUsize>, verdict: oneshot::Sender<bool>) -> Self {
        SettingsSniffer {
            io,
            seen: Some(Vec::new()),
            limit,
            verdict: Some(verdict),
        }
    }

    fn decide(&mut self, speaks_h2: bool) {
        if let Some(verdict) = self.verdict.take() {
            let _ = verdict.send(speaks_h2);
        }
    }

    fn inspect(&mut self, bytes: &[u8]) {
        let Some(seen) = self.seen.as_mut() else {
            return;
        };
        if bytes.is_empty() {
            // Closed before a whole frame header: not an HTTP/2 server.
            self.seen = None;
            self.decide(false);
            return;
        }
        seen.extend_from_slice(bytes);
        if seen.len() < 9 {
            return;
        }
        let len = (seen[0] as usize) << 16 | (seen[1] as usize) << 8 | seen[2] as usize;
        // The server preface is a SETTINGS frame on stream 0 (RFC 9113, 3.4);
        // anything else is hyper's to refuse.
        let settings = seen[3] == 0x4 && seen[5..9] == [0, 0, 0, 0];
        if !settings || len > 16 * 1024 {
            self.seen = None;
            self.decide(false);
            return;
        }
        if let Some(verdict) = self.verdict.take() {
            let _ = verdict.send(true);
        }
        if seen.len() < 9 + len {
            return;
        }
        for setting in seen[9..9 + len].chunks_exact(6) {
            if u16::from_be_bytes([setting[0], setting[1]]) == 0x3 {
                let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                // Zero streams would leave nothing to send on; one is kept.
                let value = (value as usize).clamp(1, STREAMS_PER_CONNECTION);
                self.limit.store(value, Relaxed);
            }
        }
        self.seen = None;
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SettingsSniffer<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.seen.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            let new = buf.filled()[before..].to_vec();
            self.inspect(&new);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SettingsSniffer<I> {
    crate::io::writes_pass_to!(io);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstreams_stream_limit_is_read_from_its_first_settings() {
        let limit = Arc::new(AtomicUsize::new(STREAMS_PER_CONNECTION));
        let (verdict, mut heard) = oneshot::channel();
        let mut sniffer = SettingsSniffer::new((), limit.clone(), verdict);
        // SETTINGS: HEADER_TABLE_SIZE 4096, MAX_CONCURRENT_STREAMS 7, in pieces.
        let frame = [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 3, 0, 0, 0, 7];
        sniffer.inspect(&frame[..5]);
        assert_eq!(limit.load(Relaxed), STREAMS_PER_CONNECTION);
        sniffer.inspect(&frame[5..]);
        assert_eq!(limit.load(Relaxed), 7);
        assert!(sniffer.seen.is_none(), "later bytes are not looked at");
        assert_eq!(heard.try_recv(), Ok(true));
        // A huge limit is capped by our own.
        let limit = Arc::new(AtomicUsize::new(0));
        SettingsSniffer::new((), limit.clone(), oneshot::channel().0)
            .inspect(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 255, 255, 255, 255]);
        assert_eq!(limit.load(Relaxed), STREAMS_PER_CONNECTION);
    }

    #[test]
    fn an_http1_answer_to_the_preface_says_the_upstream_does_not_speak_http2() {
        let (verdict, mut heard) = oneshot::channel();
        let mut sniffer = SettingsSniffer::new((), Arc::new(AtomicUsize::new(1)), verdict);
        sniffer.inspect(b"HTTP/1.1 400 Bad Request\r\n");
        assert_eq!(heard.try_recv(), Ok(false));

        let (verdict, mut heard) = oneshot::channel();
        let mut sniffer = SettingsSniffer::new((), Arc::new(AtomicUsize::new(1)), verdict);
        sniffer.inspect(b"HTT");
        sniffer.inspect(b"");
        assert_eq!(heard.try_recv(), Ok(false), "closed early");
    }
}
