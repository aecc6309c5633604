//! HTTP/1.1 client connections served by the proxy itself while their
//! requests are simple: a whole head in hand, HTTP/1.1, no body, nothing to
//! upgrade or expect. The request runs in the connection's task and its
//! response is written with the head and first body bytes in one send.
//!
//! Anything else hands the connection, with the bytes already read, to
//! hyper's server for the rest of its life. So hyper still answers malformed
//! heads (400, 431), request bodies, `Expect: 100-continue`, upgrades and
//! HTTP/1.0, and a head that arrives in pieces is read under its timeout.

use super::fallback::serve_http1;
use crate::conn::ConnContext;
use crate::io::read_buf::ReadBuffer;
use crate::io::Prefixed;
use crate::message::headers;
use crate::message::limits::MAX_HEADERS;
use crate::message::ProxyBody;
use crate::proto::Handler;
use crate::proto::RequestBody;
use crate::time::coarse as coarse_timer;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Holds a whole request head; a bigger one goes to hyper.
const READ_BUF: usize = 8 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

struct Conn<I> {
    io: I,
    buf: ReadBuffer,
    out: Vec<u8>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Reads more; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.buf.poll_read_from(&mut self.io, READ_BUF, cx)).await
    }

    async fn flush_out(&mut self) -> io::Result<()> {
        let result = self.io.write_all(&self.out).await;
        self.out.clear();
        result
    }
}

/// How long a connection idle between requests stays open once the drain
/// starts: a client that sends its next request meanwhile gets it answered
/// with `Connection: close` instead of a closed connection under it.
pub const DRAIN_IDLE_LINGER: Duration = Duration::from_secs(1);

pub async fn serve<I, H>(
    io: I,
    ctx: Arc<ConnContext>,
    header_read_timeout: Duration,
    draining: watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut conn = Conn {
        io,
        buf: ReadBuffer::new(READ_BUF),
        out: Vec::new(),
    };
    // Made once per connection and re-armed per wait: no clock read, timer
    // registration or drain-watch registration per request. A coarse start
    // time plus one tick is never early and at most two ticks late.
    let limit = |wait| coarse_timer::coarse_now() + wait + coarse_timer::TICK;
    let mut idle_limit = coarse_timer::sleep_until(limit(header_read_timeout));
    let mut drain_watch = draining.clone();
    let mut drained = std::pin::pin!(crate::shared::drained(&mut drain_watch));
    let mut draining_seen = false;
    let seat = ctx.seat.clone();
    let mut evicted = std::pin::pin!(seat.evicted());
    loop {
        if conn.buf.is_empty() {
            let wait = match draining_seen {
                false => header_read_timeout,
                true => header_read_timeout.min(DRAIN_IDLE_LINGER),
            };
            idle_limit.reset(limit(wait));
            // Between requests the connection is idle: it may be closed to
            // make room for a new one.
            seat.idle();
            let read = tokio::select! {
                biased;
                read = conn.fill() => Some(read),
                () = &mut idle_limit => return,
                () = drained.as_mut(), if !draining_seen => None,
                () = evicted.as_mut() => return,
            };
            let Some(read) = read else {
                // Draining: wait a little for a request that may be on its
                // way, to answer it with `Connection: close`, rather than
                // close under it (HAProxy's idle-close-on-response).
                draining_seen = true;
                continue;
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
            seat.busy();
            idle_limit.pause();
        }
        let Some((len, req)) = parse_request(conn.buf.unread()) else {
            let read = Bytes::copy_from_slice(conn.buf.unread());
            let io = TokioIo::new(Prefixed::new(read, conn.io));
            return serve_http1(io, ctx, header_read_timeout, draining, handler).await;
        };
        conn.buf.consume(len);
        let head_only = req.method() == Method::HEAD;
        let close = headers::connection_has(req.headers(), "close");
        let Ok(resp) = handler.call(req, ctx.clone()).await;
        let draining_now = *draining.borrow();
        let written = write_response(&mut conn, resp, head_only, close || draining_now).await;
        if !matches!(written, Ok(false)) {
            let _ = conn.io.shutdown().await;
            return;
        }
    }
}

/// A simple request, or None for anything hyper should have.
pub(crate) fn parse_request(buf: &[u8]) -> Option<(usize, Request<RequestBody>)> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if parsed.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    // Header values and the target share one copy of the head.
    let head = crate::io::read_buf::shared_copy(&buf[..len]);
    let slice = |part: &[u8]| {
        let at = part.as_ptr() as usize - buf.as_ptr() as usize;
        head.slice(at..at + part.len())
    };
    // Room for the two the proxy may add (Host, the client's identity): a full
    // map grows on any insert, even one that replaces.
    let mut headers = headers::map_with_capacity(parsed.headers.len() + 2);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return None;
        }
        if name == CONTENT_LENGTH && h.value != b"0" {
            return None;
        }
        headers.append(name, HeaderValue::from_maybe_shared(slice(h.value)).ok()?);
    }
    let uri = Uri::from_maybe_shared(slice(parsed.path?.as_bytes())).ok()?;
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((len, req))
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes the head and streams the body; true when the connection must
/// close. Bytes are gathered and written whenever the body has nothing more
/// ready, so a streaming response is not held back and a small one leaves
/// in a single send.
async fn write_response<I>(
    conn: &mut Conn<I>,
    resp: Response<ProxyBody>,
    head_only: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let out = &mut conn.out;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Framing and the connection's fate are this server's to write: those
    // headers are not copied (the proxy's own answers and plugin answers
    // have not been through hop-by-hop stripping).
    // One pass over the headers also notes what the head needs from them.
    let (mut close, mut has_date) = (close, false);
    for (name, value) in &parts.headers {
        if name == CONNECTION {
            close |= headers::lists(value, "close");
        } else if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            has_date |= name == DATE;
            push_header(out, name.as_str(), value.as_bytes());
        }
    }
    let declared = || headers::declared_length(&parts.headers);
    let exact = body.size_hint().exact();
    let mut framing = if no_body || head_only {
        // A HEAD answer states the length a GET would have, when known; an
        // empty HEAD body says nothing about it.
        let stated = declared().or(exact.filter(|n| *n > 0 && head_only));
        if let Some(n) = stated.filter(|_| !(status.is_informational() || status == StatusCode::NO_CONTENT)) {
            push_length(out, n);
        }
        Framing::None
    } else if let Some(n) = exact.or_else(declared) {
        // The body's known size wins over a header that may be wrong (a plugin's answer).
        push_length(out, n);
        Framing::Length(n)
    } else {
        push_header(out, "transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !has_date {
        crate::message::date::with_date(|date| push_header(out, "date", date));
    }
    if close {
        push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    headers::recycle(parts.headers);
    let mut body = Pin::new(&mut body);
    loop {
        if matches!(framing, Framing::None | Framing::Length(0)) || body.is_end_stream() {
            break;
        }
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                conn.flush_out().await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue, // HTTP/1.1 trailers are not passed on
            },
        };
        match &mut framing {
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(io::Error::other("response body longer than its content-length"));
                }
                *left -= data.len() as u64;
                conn.out.extend_from_slice(&data);
            }
            Framing::Chunked if data.is_empty() => {}
            Framing::Chunked => {
                let _ = write!(conn.out, "{:x}\r\n", data.len());
                conn.out.extend_from_slice(&data);
                conn.out.extend_from_slice(b"\r\n");
            }
            Framing::None => {}
        }
        if conn.out.len() >= WRITE_BATCH {
            conn.flush_out().await?;
        }
    }
    let complete = match framing {
        Framing::Length(left) => left == 0 || head_only,
        Framing::Chunked => {
            conn.out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Framing::None => true,
    };
    conn.flush_out().await?;
    if conn.out.capacity() > WRITE_BATCH * 2 {
        conn.out = Vec::new();
    }
    if !complete {
        return Err(io::Error::other("response body shorter than its content-length"));
    }
    Ok(close)
}

/// Formatted in place: no string per response.
fn push_length(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "content-length: {n}\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_simple_requests_are_kept() {
        let simple = b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\nGET /next";
        let (len, req) = parse_request(simple).unwrap();
        assert_eq!(&simple[len..], b"GET /next");
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        for other in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nho st: x\r\n\r\n",
        ] {
            assert!(
                parse_request(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
