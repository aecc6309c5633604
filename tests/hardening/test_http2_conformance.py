"""Defects 6, 8 and 9: RFC 9113 conformance (stream states, self-dependency,
malformed requests), HTTP/2 response hygiene, and work without progress
(empty CONTINUATION floods, HPACK bombs) cut off with ENHANCE_YOUR_CALM."""

from __future__ import annotations

import struct

import pytest
from h2.errors import ErrorCodes

from conftest import one_service
from h2_client import Client
from hardening_tools import worker_cpu

HEADERS, PRIORITY, CONTINUATION, DATA = 0x1, 0x2, 0x9, 0x0
END_STREAM, END_HEADERS, PRIORITY_FLAG = 0x1, 0x4, 0x20
# :method GET, :scheme http, :path /, then :authority "web" as a literal not indexed
GET_ROOT = bytes([0x82, 0x86, 0x84, 0x01, 0x03]) + b"web"


@pytest.fixture
def h2(backend, proxy):
    p = proxy(one_service([backend("web-1").addr], listener_protocol="http2"))
    made: list[Client] = []

    def connect(**kw) -> Client:
        c = Client(p.addresses["outbound"], **kw)
        c.pump(lambda: c.settings_acked)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def still_serves(c: Client) -> None:
    sid = c.request("/after")
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "200"


# Section 5.1: frames on closed streams


def goaway_code(c: Client):
    codes = [int.from_bytes(p[4:8], "big") for kind, _, _, p in c.raw_frames if kind == 0x7]
    return codes[-1] if codes else None


def stream_error(c: Client, sid: int):
    """Waits for the proxy's answer to an error on `sid`: the RST_STREAM
    code, or the GOAWAY code if it closed the connection instead."""
    c.pump(lambda: c.reset_code(sid) is not None or goaway_code(c) is not None or c.closed)
    return c.reset_code(sid) if c.reset_code(sid) is not None else goaway_code(c)


def raw_get_is_answered(c: Client, sid: int, block: bytes = GET_ROOT) -> bool:
    """Sends a request's header block on `sid` by hand; True once a response
    for it ends, False if the connection ends instead."""
    c.send_raw(HEADERS, END_STREAM | END_HEADERS, sid, block)
    c.pump(
        lambda: (
            any(s == sid and f & END_STREAM for _, f, s, _ in c.raw_frames)
            or goaway_code(c) is not None
            or c.closed
        )
    )
    return goaway_code(c) is None and not c.closed


def test_data_after_both_sides_ended_is_stream_closed(h2):
    c = h2()
    sid = c.request("/")
    c.pump(lambda: sid in c.ended)
    c.send_raw(DATA, 0, sid, b"late")
    assert stream_error(c, sid) == ErrorCodes.STREAM_CLOSED


def test_data_after_the_client_reset_the_stream_is_stream_closed(h2):
    c = h2(validate=False)
    sid = c.request("/delay/2000", method="POST", end=False)
    c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    c.send_raw(DATA, 0, sid, b"late")
    assert stream_error(c, sid) == ErrorCodes.STREAM_CLOSED


# Section 5.3.1: a stream cannot depend on itself


def test_priority_on_itself_is_a_protocol_error(h2):
    c = h2()
    c.send_raw(PRIORITY, 0, 1, struct.pack(">IB", 1, 16))
    assert stream_error(c, 1) == ErrorCodes.PROTOCOL_ERROR


def test_headers_depending_on_itself_is_a_protocol_error_and_the_connection_goes_on(h2):
    c = h2()
    c.send_raw(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 16) + GET_ROOT)
    assert stream_error(c, 1) == ErrorCodes.PROTOCOL_ERROR
    assert raw_get_is_answered(c, 3)


# Sections 8.1.1 and 8.2: malformed requests end with RST_STREAM(PROTOCOL_ERROR)

BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/")]


@pytest.mark.parametrize(
    "headers",
    [
        BASE + [("X-Upper", "1")],
        BASE + [(":foo", "bar")],
        [(":method", "GET"), ("x-a", "1"), (":scheme", "http"), (":authority", "web"), (":path", "/")],
        BASE + [(":status", "200")],
        BASE + [("connection", "keep-alive")],
        BASE + [("transfer-encoding", "chunked")],
        BASE + [("te", "gzip")],
        BASE[1:],
        [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "")],
        BASE + [(":path", "/again")],
        BASE + [(":method", "POST")],
        BASE + [("x-a", " leading")],
        BASE + [("x-a", "trailing\t")],
        BASE + [("host", "other")],
    ],
    ids=[
        "uppercase-name",
        "unknown-pseudo",
        "pseudo-after-regular",
        "status-in-request",
        "connection",
        "transfer-encoding",
        "te-not-trailers",
        "missing-method",
        "empty-path",
        "duplicate-path",
        "duplicate-method",
        "leading-space",
        "trailing-tab",
        "host-differs",
    ],
)
def test_malformed_requests_are_reset_with_protocol_error(h2, headers):
    c = h2(validate=False)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, headers, end_stream=True)
    c.flush()
    c.pump(lambda: sid in c.resets)
    assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR
    still_serves(c)


# Section 8 hygiene: what the upstream sends that HTTP/2 clients cannot take


@pytest.fixture
def h2_to(proxy, upstream):
    made: list[Client] = []

    def connect(answer: bytes) -> Client:
        u = upstream(lambda head, conn, n: answer)
        cfg = one_service([u.addr], listener_protocol="http2")
        p = proxy(cfg)
        c = Client(p.addresses["outbound"])
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def test_a_204_with_content_length_reaches_http2_clients_without_it(h2_to):
    c = h2_to(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n")
    sid = c.request("/")
    c.pump(lambda: sid in c.ended or sid in c.resets)
    assert sid in c.ended, c.resets
    assert c.headers[sid][":status"] == "204"
    assert "content-length" not in c.headers[sid]


def test_content_length_in_trailers_is_dropped(h2_to):
    c = h2_to(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: content-length, x-sum\r\n\r\n"
        b"2\r\nok\r\n0\r\ncontent-length: 99\r\nx-sum: 7\r\n\r\n"
    )
    sid = c.request("/", extra=[("te", "trailers")])
    c.pump(lambda: sid in c.ended or sid in c.resets)
    assert sid in c.ended, c.resets
    assert bytes(c.data[sid]) == b"ok"
    assert c.trailers[sid] == {"x-sum": "7"}


def test_a_status_out_of_range_is_a_502(h2_to):
    c = h2_to(b"HTTP/1.1 999 Weird\r\ncontent-length: 0\r\n\r\n")
    sid = c.request("/")
    c.pump(lambda: sid in c.ended or sid in c.resets)
    assert c.headers[sid][":status"] == "502"


# Section 10.5 and CVE-2024-27316-style floods


def test_a_header_block_in_endless_empty_continuations_is_cut_off(h2):
    c = h2()
    cpu = worker_cpu()
    c.send_raw(HEADERS, END_STREAM, 1, GET_ROOT)
    # 50,000 empty frames in one write: the proxy stops at the 65th.
    try:
        c.sock.sendall(b"\x00\x00\x00\x09\x00\x00\x00\x00\x01" * 50_000)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while the flood was still being written
    c.pump(lambda: goaway_code(c) is not None)
    assert goaway_code(c) == ErrorCodes.ENHANCE_YOUR_CALM
    assert worker_cpu() - cpu < 0.5


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def test_repeated_hpack_bombs_are_cut_off(h2):
    c = h2()
    # Stream 1 puts a 4,000-byte value in the decoder's table (literal with
    # incremental indexing); every later block names it 30 times in 30 bytes:
    # 120 KB decoded per block, a 431 each.
    value = b"v" * 4000
    insert = b"\x40" + hpack_int(6, 7, 0) + b"x-bomb" + hpack_int(len(value), 7, 0) + value
    cpu = worker_cpu()
    assert raw_get_is_answered(c, 1, GET_ROOT + insert)
    bomb = GET_ROOT + bytes([0xBE]) * 30  # index 62: the newest table entry
    answered = 0
    for sid in range(3, 3 + 2 * 40, 2):
        if not raw_get_is_answered(c, sid, bomb):
            break
        answered += 1
    assert goaway_code(c) == ErrorCodes.ENHANCE_YOUR_CALM
    assert answered == 16, "the 17th oversized head should end the connection"
    assert worker_cpu() - cpu < 0.5
