//! The HTTP/2 server's frame layer against RFC 9113: a client written by
//! hand drives [`serve`] over an in-memory pipe, sends frames that break a
//! rule, and checks the exact frame and error code the server answers with.
//!
//! Frames are built and parsed here from the RFC, not with `frame.rs`, so
//! a mistake there is not repeated on both sides. Requests go through the
//! real proxy: with no routes they get its own 404.

use super::serve;
use crate::config::{fixtures, Config};
use crate::conn::admission::{Admission, Admitted};
use crate::conn::ConnContext;
use crate::shared::Shared;
use crate::table::Table;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

// Frame types, flags and settings (RFC 9113, 6 and 6.5.2).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// No frame type registered with IANA has this value.
const UNKNOWN: u8 = 0xfa;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const ENABLE_PUSH: u16 = 0x2;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The frame size the server accepts (it never raises it).
const FRAME: usize = 16_384;
/// The stream and connection windows the server opens to (its SETTINGS
/// and first WINDOW_UPDATE say so).
const RECV_WINDOW: usize = 1 << 20;

/// `GET http://web/`: :method GET, :scheme http, :path / (static table
/// entries 2, 6 and 4), and :authority "web" as a literal without indexing.
const GET_WEB: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];

/// How long the server may stay silent before a test fails.
const WAIT: Duration = Duration::from_secs(10);

fn no_routes() -> Config {
    Config {
        listeners: vec![fixtures::listener("l", "127.0.0.1:0")],
        ..fixtures::config()
    }
}

/// Error codes by their RFC 9113 (section 7) names.
fn code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "an unregistered error code",
    }
}

/// A frame: 9-byte header (24-bit length, type, flags, 31-bit stream id),
/// then the payload (RFC 9113, 4.1).
fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24, "no frame can be that long");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    raw(SETTINGS, 0, 0, &payload)
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    raw(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn data(stream: u32, len: usize) -> Vec<u8> {
    raw(DATA, 0, stream, &vec![b'x'; len])
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("four bytes"))
    }
}

/// Runs a test on a current-thread runtime, as the proxy's workers do.
fn run<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(test)
}

/// The client end of one connection to `serve`.
struct Client {
    io: DuplexStream,
    /// Bytes read but not yet parsed into a frame.
    unread: Vec<u8>,
    /// Kept: dropping the sender would start a drain.
    _drain: watch::Sender<bool>,
    _seat: Admitted,
}

impl Client {
    /// A connection to a proxy configured by `config`, served by a task of
    /// the current runtime.
    fn connect(config: Config) -> Client {
        let table = Table::build(config, None, None).expect("a routing table");
        let (drain, draining) = watch::channel(false);
        let shared = Arc::new(Shared::new(table, None, draining.clone()));
        let (seat, _) = Admission::new(16).admit().expect("a seat");
        let ctx = Arc::new(ConnContext::detached(shared, seat.seat.clone()));
        // Room for every test's input, so that writes never wait for the server.
        let (io, server_io) = tokio::io::duplex(4 << 20);
        tokio::spawn(serve(server_io, ctx, WAIT, draining, crate::proxy::handle));
        Client {
            io,
            unread: Vec::new(),
            _drain: drain,
            _seat: seat,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A server that already closed fails the write; what it said before
        // closing is what the test checks.
        let _ = self.io.write_all(bytes).await;
    }

    /// The next frame, or None once the server has closed the connection.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.unread.len() >= 9 {
                let h = &self.unread;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                if self.unread.len() >= 9 + len {
                    let frame = Frame {
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                        payload: h[9..9 + len].to_vec(),
                    };
                    self.unread.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut buf = [0; 16 * 1024];
            let read = tokio::time::timeout(WAIT, self.io.read(&mut buf)).await;
            match read.expect("the server said nothing for 10 s") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.unread.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn expect_frame(&mut self, waiting_for: &str) -> Frame {
        match self.next_frame().await {
            Some(frame) => frame,
            None => panic!("the connection closed before {waiting_for}"),
        }
    }

    /// Sends the preface and a SETTINGS frame with `values`, and waits for
    /// the server's SETTINGS and its acknowledgement of ours.
    async fn handshake(&mut self, values: &[(u16, u32)]) {
        let mut opening = PREFACE.to_vec();
        opening.extend(settings(values));
        self.send(&opening).await;
        let first = self.expect_frame("the server's SETTINGS").await;
        assert_eq!(
            (first.kind, first.flags & ACK),
            (SETTINGS, 0),
            "the server must open with SETTINGS"
        );
        self.send(&raw(SETTINGS, ACK, 0, &[])).await;
        loop {
            let frame = self.expect_frame("the SETTINGS acknowledgement").await;
            assert_ne!(
                frame.kind,
                GOAWAY,
                "GOAWAY ({}) during the handshake",
                code_name(frame.u32_at(4))
            );
            if frame.kind == SETTINGS && frame.flags & ACK != 0 {
                return;
            }
        }
    }

    /// Reads up to the server's GOAWAY and then to the end of the
    /// connection: the last stream id and the error code it named.
    async fn connection_error(&mut self) -> (u32, &'static str) {
        let goaway = loop {
            let frame = self.expect_frame("a GOAWAY").await;
            if frame.kind == GOAWAY {
                break frame;
            }
        };
        // A connection error ends the connection (RFC 9113, 5.4.1), and no
        // stream writes after its GOAWAY.
        while let Some(frame) = self.next_frame().await {
            assert_eq!(
                frame.stream, 0,
                "a frame for stream {} after the GOAWAY",
                frame.stream
            );
        }
        (goaway.u32_at(0) & 0x7fff_ffff, code_name(goaway.u32_at(4)))
    }

    /// Reads up to the RST_STREAM for `stream`: the error code it named.
    async fn stream_error(&mut self, stream: u32) -> &'static str {
        loop {
            let frame = self.expect_frame("a RST_STREAM").await;
            match frame.kind {
                RST_STREAM if frame.stream == stream => return code_name(frame.u32_at(0)),
                GOAWAY => panic!(
                    "a connection error ({}) where stream {stream} should have been reset",
                    code_name(frame.u32_at(4))
                ),
                _ => {}
            }
        }
    }

    /// PINGs the server and waits for the answer: everything sent before
    /// was taken without a GOAWAY or a reset.
    async fn assert_alive(&mut self) {
        self.send(&raw(PING, 0, 0, b"stillok?")).await;
        loop {
            let frame = self.expect_frame("the PING's answer").await;
            match frame.kind {
                PING if frame.flags & ACK != 0 && frame.payload == b"stillok?" => return,
                GOAWAY => panic!("GOAWAY ({})", code_name(frame.u32_at(4))),
                RST_STREAM => panic!("stream {} reset ({})", frame.stream, code_name(frame.u32_at(0))),
                _ => {}
            }
        }
    }

    /// Opens `stream` with a GET that stays open on the client's side and
    /// waits for the head of the proxy's 404. With an INITIAL_WINDOW_SIZE
    /// of 0 the 404's body never goes out, so the stream stays open; the
    /// proxy dropped the request body unread, so DATA on the stream counts
    /// against its window, while the connection window is given back.
    async fn open_stalled_stream(&mut self, stream: u32) {
        self.send(&raw(HEADERS, END_HEADERS, stream, GET_WEB)).await;
        loop {
            let frame = self.expect_frame("the answer's HEADERS").await;
            assert!(
                !matches!(frame.kind, GOAWAY | RST_STREAM),
                "stream {stream} not opened"
            );
            if frame.kind == HEADERS && frame.stream == stream {
                assert_eq!(frame.flags & END_STREAM, 0, "the answer must wait for its window");
                return;
            }
        }
    }
}

/// A fresh connection past its handshake.
async fn connected(values: &[(u16, u32)]) -> Client {
    let mut client = Client::connect(no_routes());
    client.handshake(values).await;
    client
}

#[test]
fn settings_whose_length_is_not_a_multiple_of_six_are_a_frame_size_error() {
    run(async {
        let mut client = connected(&[]).await;
        client.send(&raw(SETTINGS, 0, 0, &[0, 4, 0, 0, 0])).await;
        assert_eq!(client.connection_error().await, (0, "FRAME_SIZE_ERROR"));
    });
}

#[test]
fn a_settings_ack_with_a_payload_is_a_frame_size_error() {
    run(async {
        let mut client = connected(&[]).await;
        client.send(&raw(SETTINGS, ACK, 0, &[0, 4, 0, 0, 0, 1])).await;
        assert_eq!(client.connection_error().await, (0, "FRAME_SIZE_ERROR"));
    });
}

#[test]
fn settings_on_a_stream_are_a_protocol_error() {
    run(async {
        let mut client = connected(&[]).await;
        client.send(&raw(SETTINGS, 0, 1, &[])).await;
        assert_eq!(client.connection_error().await, (0, "PROTOCOL_ERROR"));
    });
}

#[test]
fn enable_push_above_one_is_a_protocol_error() {
    run(async {
        let mut client = connected(&[]).await;
        for allowed in [0, 1] {
            client.send(&settings(&[(ENABLE_PUSH, allowed)])).await;
            client.assert_alive().await;
        }
        client.send(&settings(&[(ENABLE_PUSH, 2)])).await;
        assert_eq!(client.connection_error().await, (0, "PROTOCOL_ERROR"));
    });
}

#[test]
fn max_frame_size_outside_16384_to_2_pow_24_minus_1_is_a_protocol_error() {
    run(async {
        let mut client = connected(&[]).await;
        for allowed in [16_384, (1 << 24) - 1] {
            client.send(&settings(&[(MAX_FRAME_SIZE, allowed)])).await;
            client.assert_alive().await;
        }
        for refused in [16_383, 1 << 24] {
            let mut client = connected(&[]).await;
            client.send(&settings(&[(MAX_FRAME_SIZE, refused)])).await;
            assert_eq!(
                client.connection_error().await,
                (0, "PROTOCOL_ERROR"),
                "{refused}"
            );
        }
    });
}

#[test]
fn initial_window_size_above_2_pow_31_minus_1_is_a_flow_control_error() {
    run(async {
        let mut client = connected(&[]).await;
        client.send(&settings(&[(INITIAL_WINDOW_SIZE, MAX_WINDOW)])).await;
        client.assert_alive().await;
        client
            .send(&settings(&[(INITIAL_WINDOW_SIZE, MAX_WINDOW + 1)]))
            .await;
        assert_eq!(client.connection_error().await, (0, "FLOW_CONTROL_ERROR"));
    });
}

#[test]
fn a_frame_longer_than_max_frame_size_is_a_frame_size_error() {
    run(async {
        let mut client = connected(&[(INITIAL_WINDOW_SIZE, 0)]).await;
        client.open_stalled_stream(1).await;
        // The largest frame the server allows is taken...
        client.send(&data(1, FRAME)).await;
        client.assert_alive().await;
        // ...and one byte more is refused (RFC 9113, 4.2).
        client.send(&data(1, FRAME + 1)).await;
        assert_eq!(client.connection_error().await, (1, "FRAME_SIZE_ERROR"));
    });
}

#[test]
fn a_stream_opened_with_an_even_id_is_a_protocol_error() {
    run(async {
        let mut client = connected(&[]).await;
        // Even ids are the server's own (RFC 9113, 5.1.1).
        client
            .send(&raw(HEADERS, END_STREAM | END_HEADERS, 2, GET_WEB))
            .await;
        assert_eq!(client.connection_error().await, (0, "PROTOCOL_ERROR"));
    });
}

#[test]
fn a_settings_change_that_lifts_a_stream_window_past_2_pow_31_minus_1_is_a_flow_control_error() {
    run(async {
        let mut client = connected(&[(INITIAL_WINDOW_SIZE, 0)]).await;
        client.open_stalled_stream(1).await;
        // In one write, so that the server reads both frames at once: the
        // stream's answer, woken by the first, would otherwise end it.
        let mut frames = window_update(1, MAX_WINDOW);
        frames.extend(settings(&[(INITIAL_WINDOW_SIZE, 1)]));
        client.send(&frames).await;
        // A window pushed over the limit by SETTINGS is a connection error
        // (RFC 9113, 6.9.2).
        assert_eq!(client.connection_error().await, (1, "FLOW_CONTROL_ERROR"));
    });
}

#[test]
fn a_window_update_past_2_pow_31_minus_1_on_the_connection_is_a_flow_control_error() {
    run(async {
        let mut client = connected(&[]).await;
        // The connection window starts at 65,535 (RFC 9113, 6.9.2): this
        // fills it exactly.
        client.send(&window_update(0, MAX_WINDOW - 65_535)).await;
        client.assert_alive().await;
        client.send(&window_update(0, 1)).await;
        assert_eq!(client.connection_error().await, (0, "FLOW_CONTROL_ERROR"));
    });
}

#[test]
fn a_window_update_past_2_pow_31_minus_1_on_a_stream_resets_it_with_flow_control_error() {
    run(async {
        let mut client = connected(&[(INITIAL_WINDOW_SIZE, 0)]).await;
        client.open_stalled_stream(1).await;
        // One write: see the SETTINGS test above.
        let mut frames = window_update(1, MAX_WINDOW);
        frames.extend(window_update(1, 1));
        client.send(&frames).await;
        assert_eq!(client.stream_error(1).await, "FLOW_CONTROL_ERROR");
        // A stream error leaves the connection open (RFC 9113, 5.4.2).
        client.assert_alive().await;
    });
}

#[test]
fn data_beyond_a_stream_window_resets_the_stream_with_flow_control_error() {
    run(async {
        let mut client = connected(&[(INITIAL_WINDOW_SIZE, 0)]).await;
        client.open_stalled_stream(1).await;
        // The whole stream window, which the proxy never reads from; the
        // connection window is given back, so only the stream's runs out.
        let mut frames = Vec::new();
        for _ in 0..RECV_WINDOW / FRAME {
            frames.extend(data(1, FRAME));
        }
        client.send(&frames).await;
        client.assert_alive().await;
        client.send(&data(1, 1)).await;
        assert_eq!(client.stream_error(1).await, "FLOW_CONTROL_ERROR");
        client.assert_alive().await;
    });
}

#[test]
fn data_beyond_the_connection_window_is_a_flow_control_error() {
    run(async {
        // An HTTP/2 upstream that never answers: the proxy reads at most the
        // 65,535 bytes that upstream's default window lets it send, and
        // holds the rest of the request body unread, so the connection
        // window is not given back.
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let addr = upstream.local_addr().expect("its address");
        let mut config = no_routes();
        config.services = vec![crate::config::Service {
            protocol: crate::config::UpstreamProtocol::Http2,
            ..fixtures::service("web", &[&addr.to_string()])
        }];
        config.routes = vec![crate::config::Route {
            backends: vec![fixtures::backend("web")],
            ..fixtures::route("l")
        }];
        let mut client = Client::connect(config);
        client.handshake(&[]).await;
        client.send(&raw(HEADERS, END_HEADERS, 1, GET_WEB)).await;
        let mut frames = Vec::new();
        for _ in 0..RECV_WINDOW / FRAME {
            frames.extend(data(1, FRAME));
        }
        client.send(&frames).await;
        client.assert_alive().await;
        // The stream's window is as large, but the connection's is checked first.
        client.send(&data(1, 1)).await;
        assert_eq!(client.connection_error().await, (1, "FLOW_CONTROL_ERROR"));
        drop(upstream);
    });
}

#[test]
fn a_header_block_interrupted_by_another_frame_is_a_protocol_error() {
    let (first, rest) = GET_WEB.split_at(3);
    run(async {
        // A block split over HEADERS and CONTINUATION is answered...
        let mut client = connected(&[]).await;
        client.send(&raw(HEADERS, END_STREAM, 1, first)).await;
        client.send(&raw(CONTINUATION, END_HEADERS, 1, rest)).await;
        let answer = client.expect_frame("the answer").await;
        assert_eq!((answer.kind, answer.stream), (HEADERS, 1));
        // ...but any other frame, even of an unknown type, or a CONTINUATION
        // on another stream, may not come between (RFC 9113, 6.10 and 5.5).
        let interruptions = [
            raw(PING, 0, 0, b"between!"),
            raw(CONTINUATION, END_HEADERS, 3, rest),
            raw(UNKNOWN, 0, 0, b""),
            raw(DATA, END_STREAM, 1, b""),
        ];
        for interruption in interruptions {
            let mut client = connected(&[]).await;
            client.send(&raw(HEADERS, END_STREAM, 1, first)).await;
            client.send(&interruption).await;
            let kind = interruption[3];
            assert_eq!(
                client.connection_error().await,
                (0, "PROTOCOL_ERROR"),
                "type {kind:#x}"
            );
        }
    });
}

#[test]
fn trailers_with_a_pseudo_header_reset_the_stream_with_protocol_error() {
    run(async {
        let mut client = connected(&[(INITIAL_WINDOW_SIZE, 0)]).await;
        client.open_stalled_stream(1).await;
        // :path / in trailers makes the request malformed (RFC 9113, 8.1).
        client
            .send(&raw(HEADERS, END_STREAM | END_HEADERS, 1, &[0x84]))
            .await;
        assert_eq!(client.stream_error(1).await, "PROTOCOL_ERROR");
        client.assert_alive().await;
        // Trailers of regular fields (x-t: 1, a literal without indexing) end
        // a stream without a reset.
        client.open_stalled_stream(3).await;
        let trailer = [0x00, 0x03, b'x', b'-', b't', 0x01, b'1'];
        client
            .send(&raw(HEADERS, END_STREAM | END_HEADERS, 3, &trailer))
            .await;
        client.assert_alive().await;
    });
}

#[test]
fn frames_of_an_unknown_type_are_ignored_and_the_connection_goes_on() {
    run(async {
        let mut client = connected(&[]).await;
        // On the connection and on a stream never opened, with every flag
        // set (RFC 9113, 4.1 and 5.5).
        client.send(&raw(UNKNOWN, 0xff, 0, b"extension")).await;
        client.send(&raw(UNKNOWN, 0xff, 5, b"extension")).await;
        client.assert_alive().await;
        // Nor did it open stream 5: a lower id may still open a stream.
        client
            .send(&raw(HEADERS, END_STREAM | END_HEADERS, 1, GET_WEB))
            .await;
        let answer = client.expect_frame("the answer").await;
        assert_eq!((answer.kind, answer.stream), (HEADERS, 1));
        client.assert_alive().await;
    });
}

#[test]
fn a_first_frame_other_than_settings_is_a_protocol_error() {
    run(async {
        let firsts = [
            raw(PING, 0, 0, b"hello!!!"),
            raw(SETTINGS, ACK, 0, &[]),
            raw(HEADERS, END_STREAM | END_HEADERS, 1, GET_WEB),
        ];
        for first in firsts {
            let mut client = Client::connect(no_routes());
            let mut opening = PREFACE.to_vec();
            opening.extend_from_slice(&first);
            client.send(&opening).await;
            // The preface is the magic string and then SETTINGS (RFC 9113, 3.4).
            let (kind, flags) = (first[3], first[4]);
            assert_eq!(
                client.connection_error().await,
                (0, "PROTOCOL_ERROR"),
                "type {kind:#x} flags {flags:#x}"
            );
        }
    });
}
