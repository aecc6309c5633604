//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each takes the
//! fuzzer's bytes, drives one piece of the proxy with them, and panics when
//! an invariant breaks. Not an API: compiled with the tests (so `cargo test`
//! and clippy keep it in step) and for the fuzz targets (`--cfg fuzzing`),
//! never into the extension; hidden from the docs.
//!
//! The connection-level targets run the real servers (`serve_h1::serve`,
//! `serve_h2::serve`) over an in-memory pipe on a current-thread runtime, as
//! the proxy's workers do, with a routing table whose routes answer by
//! themselves (no upstream is ever contacted). The client target runs the
//! own HTTP/1.1 client against a loopback listener that answers with the
//! fuzzer's bytes. Every run is bounded: a connection that does not end
//! within `HANG` of its input being sent is a finding.

use crate::config::{fixtures, Config, DirectResponse, Redirect};
use crate::conn::admission::Admission;
use crate::conn::ConnContext;
use crate::listen::detect::{self, Protocol, H2_PREFACE, MAX_DETECT_BYTES};
use crate::message::full;
use crate::proto::h1::server as serve_h1;
use crate::proto::h2::hpack::{self, Decoder, Name};
use crate::proto::h2::server as serve_h2;
use crate::proto::{target, RequestBody};
use crate::proxy::handle;
use crate::route::{self, Route};
use crate::shared::Shared;
use crate::table::Table;
use crate::upstream::h1 as inline_h1;
use crate::upstream::{EndpointPool, Settings, Wire};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use hyper::body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// A connection still running this long after its input ended is stuck.
const HANG: Duration = Duration::from_secs(5);
/// Polls granted to the server between writes, so it handles what it has
/// before more arrives (or before the client closes).
const SETTLE_YIELDS: usize = 16;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// Runs `f` on this thread's runtime; a run longer than `limit` is a hang.
fn run<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    RUNTIME
        .with(|rt| rt.block_on(async { tokio::time::timeout(limit, f).await }))
        .unwrap_or_else(|_| panic!("{what}: still running after {limit:?}"))
}

/// Splits `data` at the first `\n` (the line without it, and the rest).
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

// ---------------------------------------------------------------- HPACK

/// Decodes a sequence of header blocks with one decoder, as one HTTP/2
/// connection does. Each block is preceded by its length in one byte; what
/// is left after the last whole block is the final block.
///
/// Checks: no panic; every field decoded is one HTTP allows as a name; each
/// field re-encoded by the proxy's own encoder decodes (with a fresh
/// decoder) to the same field; a compression error ends the connection, so
/// nothing after it is decoded.
pub fn hpack_decode(data: &[u8]) {
    let mut decoder = Decoder::new(4096);
    let mut rest = data;
    while !rest.is_empty() {
        let len = rest[0] as usize;
        let block = match rest.get(1..1 + len) {
            Some(block) => {
                rest = &rest[1 + len..];
                block
            }
            None => std::mem::take(&mut rest),
        };
        let mut fields = Vec::new();
        match decoder.decode(block, |name, value| fields.push((name, value))) {
            Err(hpack::Error::Compression) => return,
            Ok(()) | Err(hpack::Error::BadName) => {}
        }
        for (name, value) in fields {
            check_reencodes(&name, &value);
        }
    }
}

fn check_reencodes(name: &Name, value: &[u8]) {
    let Name::Header(header) = name else {
        return;
    };
    assert_eq!(
        header.as_str(),
        header.as_str().to_ascii_lowercase(),
        "a decoded name is lower case"
    );
    let mut block = Vec::new();
    hpack::encode_field(header.as_str(), value, &mut block);
    let mut again = Vec::new();
    Decoder::new(0)
        .decode(&block, |n, v| again.push((n, v)))
        .expect("the encoder's output decodes");
    assert_eq!(again.len(), 1, "one field in, one field out");
    assert_eq!(&again[0].0, name, "the name survives re-encoding");
    assert_eq!(&again[0].1[..], value, "the value survives re-encoding");
}

// -------------------------------------------------------- connection setup

/// A routing table whose routes answer by themselves: a body, a redirect,
/// a 404 for the rest. Nothing is proxied upstream.
fn self_answering() -> Config {
    let on_l = fixtures::route("l");
    let mut config = fixtures::config();
    config.listeners = vec![fixtures::listener("l", "127.0.0.1:0")];
    config.routes = vec![
        crate::config::Route {
            path_prefix: Some("/d".into()),
            direct_response: Some(DirectResponse {
                body: "hello from the fuzzer\n".into(),
                headers: [("x-fuzz".to_string(), "1".to_string())].into(),
                ..fixtures::direct_response(200)
            }),
            ..on_l.clone()
        },
        crate::config::Route {
            host: Some("*.example".into()),
            path_prefix: Some("/r".into()),
            redirect: Some(Redirect {
                status: 308,
                host: Some("elsewhere.example".into()),
                ..fixtures::redirect()
            }),
            ..on_l.clone()
        },
        crate::config::Route {
            path_prefix: Some("/e".into()),
            direct_response: Some(fixtures::direct_response(204)),
            ..on_l
        },
    ];
    config
}

struct Peer {
    ctx: Arc<ConnContext>,
    /// The connection's seat; freed when dropped.
    _seat: crate::conn::admission::Admitted,
}

fn peer() -> Peer {
    thread_local! {
        static SHARED: (Arc<Shared>, Arc<Admission>, watch::Sender<bool>) = {
            let table = Table::build(self_answering(), None, None).expect("a routing table");
            // Kept, never sent on: a closed channel would read as a drain.
            let (drain, draining) = watch::channel(false);
            let shared = Arc::new(Shared::new(table, None, draining));
            (shared, Admission::new(1024), drain)
        };
    }
    SHARED.with(|(shared, admission, _)| {
        let (seat, _) = admission.admit().expect("a seat");
        let ctx = Arc::new(ConnContext::detached(shared.clone(), seat.seat.clone()));
        Peer { ctx, _seat: seat }
    })
}

/// How the client sends its bytes, from the input's first byte: all at
/// once or in small pieces, and whether the proxy starts draining once
/// they are sent.
struct Pacing {
    chunk: usize,
    drain: bool,
}

impl Pacing {
    fn from(control: u8) -> Pacing {
        Pacing {
            chunk: match control & 0x0e {
                0 => 1,
                2 => 7,
                4 => 64,
                _ => usize::MAX,
            },
            drain: control & 1 == 1,
        }
    }
}

/// Runs `serve` on one end of a pipe, writes `input` to the other as
/// `pacing` says, lets the server act on it, then closes. Returns what the
/// server wrote. The server must end once the client has closed.
async fn converse<S, F>(serve: S, input: &[u8], pacing: Pacing) -> Vec<u8>
where
    S: FnOnce(tokio::io::DuplexStream, Arc<ConnContext>, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let peer = peer();
    let (drain, draining) = watch::channel(false);
    // Room for any input, so writes never wait for the server.
    let (client, server_io) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(serve(server_io, peer.ctx.clone(), draining));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out).await;
        out
    });
    for piece in input.chunks(pacing.chunk.max(1)) {
        if to_server.write_all(piece).await.is_err() {
            break;
        }
        settle().await;
    }
    settle().await;
    if pacing.drain {
        let _ = drain.send(true);
        settle().await;
    }
    let _ = to_server.shutdown().await;
    drop(to_server);
    tokio::time::timeout(HANG, server)
        .await
        .expect("the server ends once the client has closed")
        .expect("the server task does not panic");
    drop(drain);
    let out = reader.await.expect("the reader");
    drop(peer);
    out
}

async fn settle() {
    for _ in 0..SETTLE_YIELDS {
        tokio::task::yield_now().await;
    }
}

// ------------------------------------------------------------ HTTP/2 server

/// One HTTP/2 connection: the client preface, then the fuzzer's bytes as
/// frames (after the first byte, which sets the pacing).
///
/// Checks: no panic, no hang; the server's output is whole frames, starting
/// with its SETTINGS; frames that belong to a stream are on odd (client)
/// stream ids and connection frames on stream 0; the server's header blocks
/// decode.
pub fn h2_connection(data: &[u8]) {
    let Some((&control, frames)) = data.split_first() else {
        return;
    };
    let mut input = H2_PREFACE.to_vec();
    input.extend_from_slice(frames);
    let serve = |io, ctx, draining| serve_h2::serve(io, ctx, Duration::from_secs(10), draining, handle);
    let out = run(
        HANG * 2,
        "HTTP/2 connection",
        converse(serve, &input, Pacing::from(control)),
    );
    check_h2_output(&out);
}

fn check_h2_output(mut out: &[u8]) {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PUSH_PROMISE: u8 = 0x5;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const CONTINUATION: u8 = 0x9;
    const END_HEADERS: u8 = 0x4;
    // The server's encoder writes literals only; a decoder that allows no
    // table at all must read them.
    let mut decoder = Decoder::new(0);
    let mut block: Option<Vec<u8>> = None;
    let mut first = true;
    while !out.is_empty() {
        assert!(out.len() >= 9, "a partial frame header at the end: {out:?}");
        let len = u32::from_be_bytes([0, out[0], out[1], out[2]]) as usize;
        let (kind, flags) = (out[3], out[4]);
        let stream = u32::from_be_bytes([out[5], out[6], out[7], out[8]]) & 0x7fff_ffff;
        assert!(out.len() >= 9 + len, "a partial frame at the end");
        let payload = &out[9..9 + len];
        out = &out[9 + len..];
        if first {
            assert_eq!(kind, SETTINGS, "the server speaks first with SETTINGS");
            first = false;
        }
        assert_ne!(kind, PUSH_PROMISE, "the server never pushes");
        match kind {
            DATA | HEADERS | CONTINUATION => {
                assert!(stream % 2 == 1, "frame {kind} on stream {stream}, not a client's");
            }
            SETTINGS | PING | GOAWAY => assert_eq!(stream, 0, "frame {kind} on a stream"),
            _ => {}
        }
        match (kind, block.as_mut()) {
            (CONTINUATION, Some(b)) => b.extend_from_slice(payload),
            (CONTINUATION, None) => panic!("CONTINUATION without HEADERS"),
            (_, Some(_)) => panic!("frame {kind} inside a header block"),
            (HEADERS, None) => {
                // The server sets neither PADDED nor PRIORITY.
                assert_eq!(flags & 0x28, 0, "HEADERS with padding or priority");
                block = Some(payload.to_vec());
            }
            _ => {}
        }
        if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
            let whole = block.take().expect("a block");
            decoder
                .decode(&whole, |_, _| {})
                .expect("the server's header block decodes");
        }
    }
    assert!(block.is_none(), "a header block left unfinished");
}

// ---------------------------------------------------------- HTTP/1.1 server

/// The own HTTP/1.1 request parser on the fuzzer's bytes, then a whole
/// connection (`serve_h1::serve`, which hands what it does not serve itself
/// to hyper) fed the same bytes (after the first, which sets the pacing).
///
/// Checks of the parser: a request it keeps is HTTP/1.1, not CONNECT, has
/// no body, upgrade or expectation, and its length ends a head within the
/// input. Of the connection: no panic, no hang.
pub fn h1_server(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    check_parse_request(bytes);
    let serve = |io, ctx, draining| serve_h1::serve(io, ctx, Duration::from_secs(10), draining, handle);
    let out = run(
        HANG * 2,
        "HTTP/1.1 connection",
        converse(serve, bytes, Pacing::from(control)),
    );
    // Whatever was asked, an answer (if any) is an HTTP/1.x response.
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1."),
        "the server wrote something other than a response: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(64)])
    );
}

fn check_parse_request(bytes: &[u8]) {
    let Some((len, req)) = serve_h1::parse_request(bytes) else {
        return;
    };
    assert!(len <= bytes.len(), "the head is within the input");
    assert!(bytes[..len].ends_with(b"\n"), "the head ends with its blank line");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_ne!(req.method(), Method::CONNECT);
    let headers = req.headers();
    for refused in [
        http::header::TRANSFER_ENCODING,
        http::header::EXPECT,
        http::header::UPGRADE,
    ] {
        assert!(!headers.contains_key(&refused), "{refused} is hyper's to handle");
    }
    for length in headers.get_all(http::header::CONTENT_LENGTH) {
        assert_eq!(length, "0", "a request with a body is hyper's to handle");
    }
    // What the parser kept is what the bytes say.
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut reparsed = httparse::Request::new(&mut slots);
    assert_eq!(
        reparsed.parse(&bytes[..len]).ok(),
        Some(httparse::Status::Complete(len)),
        "the head parses alone to the same length"
    );
    assert_eq!(reparsed.method, Some(req.method().as_str()));
    assert_eq!(headers.len(), reparsed.headers.len(), "every header is kept");
}

// ---------------------------------------------------------- HTTP/1.1 client

/// The own HTTP/1.1 client (`EndpointPool::send` on its inline path) against
/// a loopback upstream that answers with the fuzzer's bytes (after the
/// first, which picks the method and pacing) and then closes.
///
/// Also checks the response-head and chunk-size parsers directly: a head
/// that parses ends within the input with a valid status; a chunk size is
/// the hex number a reference parser reads.
pub fn h1_client(data: &[u8]) {
    let Some((&control, answer)) = data.split_first() else {
        return;
    };
    check_parse_head(answer);
    for line in answer.split(|b| *b == b'\n') {
        check_chunk_size(line.strip_suffix(b"\r").unwrap_or(line));
    }
    let method = if control & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let chunk = if control & 2 == 2 { 3 } else { usize::MAX };
    run(
        HANG * 2,
        "HTTP/1.1 client exchange",
        exchange(method, answer.to_vec(), chunk),
    );
}

fn check_parse_head(answer: &[u8]) {
    if let Ok(Some((len, resp))) = inline_h1::parse_head(answer) {
        assert!(len <= answer.len(), "the head is within the input");
        assert!(
            answer[..len].ends_with(b"\n"),
            "the head ends with its blank line"
        );
        assert!((100..1000).contains(&resp.status().as_u16()));
    }
}

fn check_chunk_size(line: &[u8]) {
    let Ok(size) = inline_h1::chunk_size(line) else {
        return;
    };
    // The reference: hex digits, then optional blanks, then optional `;...`.
    let digits: Vec<u8> = line.iter().copied().take_while(u8::is_ascii_hexdigit).collect();
    let after = &line[digits.len()..];
    let after = &after[after.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    assert!(!digits.is_empty(), "a size has digits: {line:?}");
    assert!(
        after.is_empty() || after[0] == b';',
        "only an extension follows: {line:?}"
    );
    let text = std::str::from_utf8(&digits).expect("hex is ASCII");
    assert_eq!(
        u64::from_str_radix(text, 16).ok(),
        Some(size),
        "the size of {line:?}"
    );
}

async fn exchange(method: Method, answer: Vec<u8>, chunk: usize) {
    let sent = answer.len();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let upstream = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("the client connects");
        // Read the request head first, so closing does not reset the
        // connection under unread bytes.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        for piece in answer.chunks(chunk) {
            if sock.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = sock.shutdown().await;
        // Until the client closes (it may stop reading early).
        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let pool = Arc::new(EndpointPool::new(
        addr,
        Arc::new(Settings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
        }),
        None,
    ));
    let mut req = Request::new(full(""));
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from_static("/fuzz");
    req.headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("upstream"));
    if let Ok((resp, reusable)) = pool.send(req, Wire::Http1).await {
        let mut body = resp.into_body();
        let mut body = Pin::new(&mut body);
        let mut total = 0usize;
        while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        total += data.len();
                    }
                }
                Err(_) => break,
            }
        }
        // The body is made of the answer's bytes.
        assert!(total <= sent, "{total} body bytes from a {sent}-byte answer");
        drop(reusable);
    }
    drop(pool);
    let _ = tokio::time::timeout(HANG, upstream).await;
}

// ------------------------------------------------------- protocol detection

/// A reader that hands out its bytes in pieces of the given sizes, then
/// ends (or, if `hang`, stays silent forever).
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
    hang: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.data.is_empty() {
            // Silence: the detection timeout wakes the task.
            return if this.hang {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            };
        }
        let size = match this.sizes.get(this.next % this.sizes.len().max(1)) {
            Some(&s) => (s as usize).max(1),
            None => usize::MAX,
        };
        this.next += 1;
        let n = size.min(this.data.len()).min(buf.remaining());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Protocol detection on the fuzzer's bytes, read whole and in pieces. The
/// input is: a byte of flags, a byte count `k`, `k` piece sizes, the data.
///
/// Checks: how the bytes arrive does not change the verdict; the bytes
/// returned are the start of the input; HTTP/2 means the preface, HTTP/1.1
/// a request line, Closed an empty input.
pub fn detect(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&k, rest)) = rest.split_first() else {
        return;
    };
    let k = (k as usize % 8).min(rest.len());
    let (sizes, bytes) = rest.split_at(k);
    // Rarely: silence after the bytes, so detection ends by its timeout.
    let hang = flags & 7 == 7;
    let verdict = |sizes| {
        let mut reader = Pieces {
            data: bytes,
            sizes,
            next: 0,
            hang,
        };
        run(HANG, "protocol detection", async {
            detect::detect(&mut reader, Duration::from_millis(1)).await
        })
        .expect("reading from memory does not fail")
    };
    let (whole, seen) = verdict(&[]);
    let (pieces, seen_in_pieces) = verdict(sizes);
    assert_eq!(whole, pieces, "the verdict depends on how the bytes arrived");
    for seen in [&seen, &seen_in_pieces] {
        assert!(bytes.starts_with(seen), "the bytes returned are the input's");
        assert!(seen.len() <= MAX_DETECT_BYTES, "read past the detection limit");
    }
    match whole {
        Protocol::Http2 => assert!(seen.starts_with(H2_PREFACE)),
        Protocol::Http1 => {
            let (first, _) = line(&seen);
            let first = first.strip_suffix(b"\r").unwrap_or(first);
            let words: Vec<&[u8]> = first.split(|b| *b == b' ').collect();
            assert_eq!(words.len(), 3, "a request line has three parts: {first:?}");
            assert!(words[2] == b"HTTP/1.1" || words[2] == b"HTTP/1.0");
        }
        Protocol::Closed => assert!(bytes.is_empty()),
        Protocol::Opaque => {}
    }
}

// ------------------------------------------------ routing and the target

/// A request target checked and normalised (`target::check`), then matched
/// against routes (`route::find`, `host_of`). The input is lines: the
/// request target, the Host value, request headers as `name: value` up to
/// an empty line, then routes, one a line, as `host|prefix|name=value`
/// (empty fields are absent).
///
/// Checks: the normal form of a path is stable (normalising it again
/// changes nothing), starts with `/` and has no `//`, `/./` or `/../`; the
/// route found is the first that matches, by a scan and by the host index
/// (`route::Routes`); host matching ignores case;
/// `host_of` returns the start of the authority; a prefix matches whole
/// segments.
pub fn route(data: &[u8]) {
    let (target, rest) = line(data);
    let (host, mut rest) = line(rest);
    let mut headers = HeaderMap::new();
    loop {
        let (header, after) = line(rest);
        rest = after;
        if header.is_empty() {
            break;
        }
        let Some(colon) = header.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&header[..colon]),
            HeaderValue::from_bytes(header[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let routes = routes_from(rest);

    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    if let Some(path) = uri.path_and_query() {
        check_normal_form(path.path());
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    if let Ok(host) = HeaderValue::from_bytes(host) {
        req.headers_mut().insert(http::header::HOST, host);
    }
    if target::check(&mut req).is_err() {
        return;
    }
    let path = req.uri().path().to_string();
    if path.starts_with('/') {
        assert_eq!(
            target::normalize(&path).map_err(|e| e.1),
            Ok(None),
            "a checked path is already normal"
        );
    }
    // As the proxy does: the authority as text, then without its port.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            let host = req.headers().get(http::header::HOST)?;
            Some(host.to_str().unwrap_or_default().to_string())
        })
        .unwrap_or_default();
    let host = route::host_of(&authority);
    assert!(
        authority.starts_with(host),
        "host_of returns the start of the authority"
    );
    let found = route::find(&routes, host, &path, req.headers());
    let first = routes.iter().position(|r| r.matches(host, &path, req.headers()));
    assert_eq!(
        found.map(|r| r as *const Route),
        first.map(|i| &routes[i] as *const Route)
    );
    let upper = host.to_ascii_uppercase();
    for r in &routes {
        assert_eq!(
            r.matches(host, &path, req.headers()),
            r.matches(&upper, &path, req.headers()),
            "host matching ignores case"
        );
        let prefix = r.path_prefix();
        if route::path_matches(prefix, &path) {
            let bare = prefix.trim_end_matches('/');
            let rest = &path[bare.len()..];
            assert!(
                rest.is_empty() || rest.starts_with('/'),
                "{prefix:?} matched {path:?} mid-segment"
            );
        }
    }
    let index = route::Routes::new(routes);
    assert_eq!(
        index.find(host, &path, req.headers()),
        first,
        "the host index finds the route the in-order scan finds"
    );
}

/// Routes from lines of `host|prefix|name=value`, built as config loading
/// builds them; lines that config validation would refuse are skipped.
fn routes_from(data: &[u8]) -> Vec<Route> {
    let text = String::from_utf8_lossy(data);
    let mut routes = Vec::new();
    for spec in text.lines().take(16) {
        let mut fields = spec.splitn(3, '|');
        let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        let host = some(fields.next());
        let path_prefix = some(fields.next()).filter(|p| p.starts_with('/'));
        let headers = some(fields.next())
            .and_then(|h| h.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .into_iter()
            .collect();
        let cfg = crate::config::Route {
            host,
            path_prefix,
            headers,
            direct_response: Some(fixtures::direct_response(200)),
            ..fixtures::route("l")
        };
        if let Ok(r) = Route::new(routes.len(), &cfg, |_| None) {
            routes.push(r);
        }
    }
    routes
}

/// The normal form of an absolute path is stable, has no empty or dot
/// segments, and keeps the path's other characters: normalising only
/// decodes escapes and removes slashes and dot-segments, so the non-ASCII
/// characters of the result are some of the path's, in order.
fn check_normal_form(path: &str) {
    if !path.starts_with('/') {
        return;
    }
    let Ok(normal) = target::normalize(path) else {
        return;
    };
    let normal = normal.unwrap_or_else(|| path.to_string());
    let again = target::normalize(&normal).map_err(|e| e.1);
    assert_eq!(
        again,
        Ok(None),
        "normalising {path:?} gave {normal:?}, which is not normal"
    );
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    for bad in ["//", "/./", "/../"] {
        assert!(
            !normal.contains(bad),
            "{normal:?} (from {path:?}) contains {bad:?}"
        );
    }
    assert!(
        !normal.ends_with("/.") && !normal.ends_with("/.."),
        "{normal:?} ends with a dot-segment"
    );
    let mut originals = path.chars().filter(|c| !c.is_ascii());
    for c in normal.chars().filter(|c| !c.is_ascii()) {
        assert!(
            originals.any(|o| o == c),
            "normalising {path:?} gave {normal:?}: {c:?} is not the path's"
        );
    }
}
