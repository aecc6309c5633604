//! HTTP/1.1 to a plain-TCP upstream, driven by the request's own task.
//!
//! hyper's client runs each upstream connection on a task of its own and
//! reaches it over a channel, so every request costs a channel send, a wake
//! of that task and a wake back. For the common case, a request without a
//! body to an endpoint without TLS, this module writes the head and reads
//! the answer where the request already runs. Requests with bodies,
//! upgrades and mTLS stay on hyper.

use super::pool::EndpointPool;
use crate::io::read_buf::{shared_copy, ReadBuffer};
use crate::message::headers::connection_has;
use crate::message::{BoxError, ProxyBody};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::AsyncWriteExt;

use crate::io::DirectTcp;
use crate::message::limits::{MAX_HEADERS, MAX_HEAD_BYTES};

/// A connection's read buffer to begin with; it grows for a large head.
const READ_BUF: usize = 16 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;

/// Whether a request can go this way: no body to stream, nothing to upgrade.
pub fn suits(req: &Request<ProxyBody>) -> bool {
    req.body().is_end_stream() && req.method() != Method::CONNECT && !req.headers().contains_key(UPGRADE)
}

#[derive(Debug)]
pub enum Error {
    /// The connection was reused and gave nothing back: it was closed while
    /// idle, so the request was most likely never seen.
    Stale(io::Error),
    Io(io::Error),
    Protocol(&'static str),
}

/// An upstream connection and the bytes read from it but not yet used.
pub struct InlineConn {
    stream: DirectTcp,
    buf: ReadBuffer,
    /// The request head being written; kept for its capacity.
    out: Vec<u8>,
    reused: bool,
}

impl InlineConn {
    pub fn new(stream: DirectTcp) -> Self {
        InlineConn {
            stream,
            buf: ReadBuffer::new(READ_BUF),
            out: Vec::new(),
            reused: false,
        }
    }

    fn buffered(&self) -> &[u8] {
        self.buf.unread()
    }

    fn consume(&mut self, n: usize) {
        self.buf.consume(n);
    }

    /// Reads more. A short read tells tokio the socket is drained, so the
    /// idle check below costs no system call.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.poll_read_from(&mut self.stream, MAX_HEAD_BYTES, cx)
    }

    /// Gives back a read buffer grown for a large head before pooling.
    pub fn shrink(&mut self) {
        self.buf.shrink_to(READ_BUF);
    }

    /// True when, while pooled, the upstream closed it or sent something unasked.
    pub fn went_bad_while_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx).is_ready()
    }
}

/// Writes the request's head into `conn`'s output buffer; the request
/// itself (not `Sync`) then need not be held across the exchange.
pub fn prepare(conn: &mut InlineConn, req: &Request<ProxyBody>) {
    encode_head(req, &mut conn.out);
}

/// Sends the prepared request on `conn` and reads the response head. The
/// body is read as the caller polls it; the connection goes back to `home`
/// when it ends.
pub async fn exchange(
    mut conn: Box<InlineConn>,
    method: &Method,
    home: Arc<EndpointPool>,
) -> Result<Response<InlineBody>, Error> {
    let out = std::mem::take(&mut conn.out);
    let written = conn.stream.write_all(&out).await;
    conn.out = out;
    let reused = std::mem::replace(&mut conn.reused, true);
    if let Err(e) = written {
        return Err(if reused { Error::Stale(e) } else { Error::Io(e) });
    }
    let mut received = false;
    let head = loop {
        match parse_head(conn.buffered()).map_err(Error::Protocol)? {
            Some((len, head)) => {
                conn.consume(len);
                match head.status() {
                    StatusCode::SWITCHING_PROTOCOLS => return Err(Error::Protocol("unasked-for upgrade")),
                    // 100 Continue, 103 Early Hints: the final answer follows.
                    s if s.is_informational() => continue,
                    _ => break head,
                }
            }
            None => match poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(0) if !received && reused => {
                    return Err(Error::Stale(io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(0) => return Err(Error::Protocol("connection closed before the response")),
                Ok(_) => received = true,
                Err(e) if !received && reused => return Err(Error::Stale(e)),
                Err(e) => return Err(Error::Io(e)),
            },
        }
    };
    let (mut parts, ()) = head.into_parts();
    let had_both_framings =
        parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH);
    let framing = framing(method, parts.status, &mut parts.headers).map_err(Error::Protocol)?;
    // A message with both framings is suspect (RFC 9112, 6.3): read it, but
    // not what follows on that connection.
    let keep_alive = parts.version == Version::HTTP_11
        && !connection_has(&parts.headers, "close")
        && !matches!(framing, Framing::UntilClose)
        && !had_both_framings;
    let mut body = InlineBody {
        conn: Some((conn, home)),
        framing,
        keep_alive,
    };
    if body.framing == Framing::Length(0) {
        body.finish();
    }
    Ok(Response::from_parts(parts, body))
}

fn encode_head(req: &Request<ProxyBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The body is empty whatever a filter or plugin set: framing and
    // connection headers are written here, never copied.
    for (name, value) in req.headers() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that define a body say it is empty, as hyper does.
    let wants_length = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if wants_length || req.headers().contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head. Header values share one copy of the head.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(usize, Response<()>)>, &'static str> {
    // Uninitialised slots: filling 128 empty headers would cost more than parsing a small head.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("invalid response status")?;
    let head = shared_copy(&buf[..len]);
    let mut map = crate::message::headers::map_with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "invalid response header name")?;
        // The value lies inside `buf`; take the same range of the copy.
        let at = h.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + h.value.len()))
            .map_err(|_| "invalid response header value")?;
        map.append(name, value);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *resp.headers_mut() = map;
    Ok(Some((len, resp)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// No length given: the body runs to the end of the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// How the response body is delimited (RFC 9112, 6.3). A chunked body
/// drops any Content-Length, which would be wrong once re-framed.
fn framing(method: &Method, status: StatusCode, headers: &mut HeaderMap) -> Result<Framing, &'static str> {
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        headers.remove(CONTENT_LENGTH);
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    if !headers.contains_key(CONTENT_LENGTH) {
        return Ok(Framing::UntilClose);
    }
    match crate::message::headers::declared_length(headers) {
        Some(n) => Ok(Framing::Length(n)),
        None => Err("invalid or conflicting content-length"),
    }
}

/// What the buffered bytes gave.
enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    Done,
}

impl Framing {
    /// Takes what it can from `conn`'s buffer.
    fn step(&mut self, conn: &mut InlineConn) -> Result<Step, &'static str> {
        loop {
            let available = conn.buffered().len();
            match *self {
                Framing::Done | Framing::Length(0) => return Ok(Step::Done),
                Framing::Length(_) | Framing::UntilClose | Framing::Chunked(Chunk::Data(_))
                    if available == 0 =>
                {
                    return Ok(Step::NeedMore)
                }
                Framing::Length(left) => {
                    let n = left.min(available as u64);
                    *self = Framing::Length(left - n);
                    return Ok(Step::Frame(take(conn, n as usize)));
                }
                Framing::UntilClose => return Ok(Step::Frame(take(conn, available))),
                Framing::Chunked(Chunk::Data(left)) => {
                    let n = left.min(available as u64);
                    *self = Framing::Chunked(if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    });
                    return Ok(Step::Frame(take(conn, n as usize)));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = line_end(conn.buffered()) else {
                        return need_more(available, MAX_CHUNK_LINE, "chunk size line too long");
                    };
                    let size = chunk_size(&conn.buffered()[..line])?;
                    conn.consume(line + 2);
                    *self = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if available < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &conn.buffered()[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF");
                    }
                    conn.consume(2);
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let (len, trailers) = match httparse::parse_headers(conn.buffered(), &mut headers) {
                        Ok(httparse::Status::Complete(done)) => done,
                        Ok(httparse::Status::Partial) => {
                            return need_more(available, MAX_HEAD_BYTES, "trailers too large")
                        }
                        Err(_) => return Err("malformed trailers"),
                    };
                    let mut map = HeaderMap::new();
                    for h in trailers {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(h.name.as_bytes()),
                            HeaderValue::from_bytes(h.value),
                        ) {
                            map.append(name, value);
                        }
                    }
                    conn.consume(len);
                    *self = Framing::Done;
                    return Ok(if map.is_empty() {
                        Step::Done
                    } else {
                        Step::Frame(Frame::trailers(map))
                    });
                }
            }
        }
    }
}

fn take(conn: &mut InlineConn, n: usize) -> Frame<Bytes> {
    // Its own allocation: a chunk may wait long for a slow reader.
    let data = Bytes::copy_from_slice(&conn.buffered()[..n]);
    conn.consume(n);
    Frame::data(data)
}

fn need_more(available: usize, limit: usize, too_long: &'static str) -> Result<Step, &'static str> {
    if available > limit {
        Err(too_long)
    } else {
        Ok(Step::NeedMore)
    }
}

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The hex size before any `;` extension: hex digits only (leading zeros
/// allowed), optional spaces or tabs before the extension, no bare CR or LF.
pub(crate) fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    const INVALID: &str = "invalid chunk size";
    if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return Err(INVALID);
    }
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = match digits.iter().rposition(|b| *b != b' ' && *b != b'\t') {
        Some(last) => &digits[..=last],
        None => return Err(INVALID),
    };
    let significant = &digits[digits.iter().position(|b| *b != b'0').unwrap_or(digits.len())..];
    if significant.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(INVALID);
    }
    let value = |d: &u8| u64::from((*d as char).to_digit(16).unwrap_or(0));
    Ok(significant.iter().fold(0, |n, d| n * 16 + value(d)))
}

/// A response body read straight from the upstream connection.
pub struct InlineBody {
    conn: Option<(Box<InlineConn>, Arc<EndpointPool>)>,
    framing: Framing,
    keep_alive: bool,
}

impl InlineBody {
    /// The body has ended: the connection is pooled again if it can carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some((conn, home)) = self.conn.take() {
            if self.keep_alive {
                home.checkin_inline(conn);
            }
        }
    }

    fn fail(&mut self, why: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(why)))
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some((conn, _)) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.step(conn) {
                Ok(Step::Frame(frame)) => {
                    if matches!(this.framing, Framing::Done | Framing::Length(0)) {
                        // Pooled now: hyper stops polling a body that says it has ended.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(why) => return this.fail(why.into()),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("upstream closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(method: Method, status: u16, headers: &[(&str, &str)]) -> Result<Framing, &'static str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        framing(&method, StatusCode::from_u16(status).unwrap(), &mut map)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "5")]),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of(Method::HEAD, 200, &[("content-length", "5")]),
            Ok(Framing::Length(0))
        );
        assert_eq!(framing_of(Method::GET, 204, &[]), Ok(Framing::Length(0)));
        assert_eq!(
            framing_of(Method::GET, 304, &[("content-length", "9")]),
            Ok(Framing::Length(0))
        );
        assert_eq!(framing_of(Method::GET, 200, &[]), Ok(Framing::UntilClose));
        assert_eq!(
            framing_of(
                Method::GET,
                200,
                &[("transfer-encoding", "gzip, chunked"), ("content-length", "3")]
            ),
            Ok(Framing::Chunked(Chunk::Size))
        );
        assert_eq!(
            framing_of(Method::GET, 200, &[("transfer-encoding", "gzip")]),
            Ok(Framing::UntilClose)
        );
        let bad = Err("invalid or conflicting content-length");
        let cl = |v| framing_of(Method::GET, 200, &[("content-length", v)]);
        assert_eq!(
            framing_of(
                Method::GET,
                200,
                &[("content-length", "3"), ("content-length", "4")]
            ),
            bad
        );
        assert_eq!(cl("-1"), bad);
        assert_eq!(cl("+5"), bad);
        assert_eq!(cl("5, 5"), Ok(Framing::Length(5)));
    }

    #[test]
    fn chunk_sizes_parse_with_extensions_and_refuse_junk() {
        assert_eq!(chunk_size(b"1a"), Ok(26));
        assert_eq!(chunk_size(b"A;name=value"), Ok(10));
        assert_eq!(chunk_size(b"0"), Ok(0));
        assert_eq!(chunk_size(b"1a \t;ext"), Ok(26));
        assert_eq!(chunk_size(b"00000000000000000001"), Ok(1));
        for junk in [
            &b""[..],
            b"xyz",
            b"+1",
            b" 1",
            b"1234567890abcdef0",
            b"1;a\nb",
            b"\x0b1",
        ] {
            assert!(chunk_size(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn head_values_share_the_head_and_keep_order() {
        let raw = b"HTTP/1.1 201 Created\r\nx-a: 1\r\nset-cookie: a\r\nset-cookie: b\r\n\r\nbody";
        let (len, resp) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["x-a"], "1");
        let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n"), Ok(None)));
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }
}
