"""The proxy's own HTTP/2 server, frame by frame: flow control both ways,
pings, CONTINUATION, malformed requests, limits and connection errors,
driven by the `h2` library over a plain socket."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Optional

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes

from conftest import one_service


class Client:
    """A raw HTTP/2 client that records what each stream received."""

    def __init__(
        self, addr: tuple[str, int], settings: Optional[dict[int, int]] = None, validate: bool = True
    ):
        self.sock = socket.create_connection(addr, timeout=5)
        config = H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.headers: dict[int, dict[str, str]] = {}
        self.data: dict[int, bytearray] = {}
        self.frames: dict[int, list[int]] = {}
        self.trailers: dict[int, dict[str, str]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.pings: list[bytes] = []
        self.goaway: Optional[ConnectionTerminated] = None
        self.closed = False
        self.auto_window = True

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(
        self, path: str, *, method: str = "GET", extra: Optional[list] = None, end: bool = True
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "web"), (":path", path)]
        self.conn.send_headers(sid, headers + (extra or []), end_stream=end)
        self.flush()
        return sid

    def pump(self, until, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                raise AssertionError("connection closed before the condition held")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("timed out waiting") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                continue
            for event in self.conn.receive_data(chunk):
                self.record(event)
            self.flush()

    def record(self, event: Any) -> None:
        if isinstance(event, ResponseReceived):
            self.headers[event.stream_id] = dict(event.headers)
        elif isinstance(event, DataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.frames.setdefault(event.stream_id, []).append(len(event.data))
            if self.auto_window and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, TrailersReceived):
            self.trailers[event.stream_id] = dict(event.headers)
        elif isinstance(event, StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, PingAckReceived):
            self.pings.append(event.ping_data)
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event

    def send_raw(self, frame_type: int, flags: int, stream: int, payload: bytes) -> None:
        self.sock.sendall(
            struct.pack(">I", len(payload))[1:]
            + bytes([frame_type, flags])
            + struct.pack(">I", stream)
            + payload
        )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def h2proxy(backend, proxy):
    p = proxy(one_service([backend("web-1").addr], listener_protocol="http2"))
    clients: list[Client] = []

    def connect(**kw) -> Client:
        c = Client(p.addresses["outbound"], **kw)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()


def test_many_streams_on_one_connection_each_get_their_own_answer(h2proxy):
    c = h2proxy()
    ids = [c.request(f"/n/{i}") for i in range(50)]
    c.pump(lambda: all(i in c.ended for i in ids))
    for n, sid in enumerate(ids):
        assert c.headers[sid][":status"] == "200"
        assert "date" in c.headers[sid]
        assert c.data[sid].decode() == f"hello from web-1 (zone-a) path=/n/{n}\n"


def test_ping_is_answered_with_its_payload(h2proxy):
    c = h2proxy()
    c.conn.ping(b"meshcore")
    c.flush()
    c.pump(lambda: c.pings)
    assert c.pings == [b"meshcore"]


def test_response_waits_for_the_clients_window_and_respects_its_frame_size(h2proxy):
    c = h2proxy(settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.auto_window = False
    sid = c.request("/bytes/200000")
    c.pump(lambda: len(c.data.get(sid, b"")) >= 1000)
    time.sleep(0.3)
    c.pump(lambda: True)
    assert len(c.data[sid]) == 1000, "the server sent past the stream window"
    c.auto_window = True
    c.conn.acknowledge_received_data(1000, sid)
    c.flush()
    c.pump(lambda: sid in c.ended, timeout=10)
    assert bytes(c.data[sid]) == b"x" * 200_000
    assert max(c.frames[sid]) <= 16384


def test_upload_larger_than_the_windows_streams_through(h2proxy):
    c = h2proxy()
    size = 3 * 1024 * 1024
    sid = c.request("/count", method="POST", end=False, extra=[("content-length", str(size))])
    sent = 0
    while sent < size:
        room = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size, size - sent)
        if room <= 0:
            c.pump(lambda: c.conn.local_flow_control_window(sid) > 0)
            continue
        c.conn.send_data(sid, b"u" * room, end_stream=sent + room == size)
        sent += room
        c.flush()
    c.pump(lambda: sid in c.ended, timeout=15)
    assert c.data[sid] == str(size).encode()


def test_header_block_over_continuation_frames(h2proxy):
    c = h2proxy()
    # 40 KB of headers cannot fit one 16 KiB frame; h2 splits them.
    sid = c.request("/headers", extra=[(f"x-big-{i}", "v" * 4000) for i in range(10)])
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "200"
    assert b'"x-big-9": "' + b"v" * 4000 in bytes(c.data[sid])


def test_oversized_head_gets_431_and_the_connection_goes_on(h2proxy):
    c = h2proxy()
    sid = c.request("/", extra=[(f"x-huge-{i}", "v" * 12000) for i in range(9)])
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "431"
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


@pytest.mark.parametrize(
    "extra, reason",
    [
        ([("connection", "keep-alive")], "connection-specific"),
        ([("X-Upper", "1")], "invalid header field"),
        ([("te", "gzip")], "connection-specific"),
    ],
)
def test_malformed_request_gets_400_and_the_connection_goes_on(h2proxy, extra, reason):
    c = h2proxy(validate=False)
    sid = c.request("/", extra=extra)
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "400"
    assert reason in c.headers[sid]["meshcore-error"]
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


def test_missing_pseudo_header_gets_400(h2proxy):
    c = h2proxy(validate=False)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "GET"), (":authority", "web")], end_stream=True)
    c.flush()
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "400"


def test_body_longer_than_content_length_resets_the_stream(h2proxy):
    c = h2proxy()
    sid = c.request("/count", method="POST", end=False, extra=[("content-length", "5")])
    # h2 checks content-length on its own side too; write the frame by hand.
    c.send_raw(0x0, 0x1, sid, b"0123456789")
    c.pump(lambda: sid in c.resets)
    assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


def test_request_trailers_reach_an_echoing_upstream_body(h2proxy):
    c = h2proxy()
    sid = c.request("/echo", method="POST", end=False)
    c.conn.send_data(sid, b"hello ")
    c.conn.send_data(sid, b"world")
    c.conn.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
    c.flush()
    c.pump(lambda: sid in c.ended)
    assert bytes(c.data[sid]) == b"hello world"


def test_client_reset_cancels_only_its_stream(h2proxy):
    c = h2proxy()
    slow = c.request("/delay/2000")
    c.conn.reset_stream(slow, ErrorCodes.CANCEL)
    c.flush()
    fast = c.request("/fast")
    c.pump(lambda: fast in c.ended)
    assert c.headers[fast][":status"] == "200"
    assert slow not in c.headers


def test_rapid_reset_is_cut_off(h2proxy):
    c = h2proxy()
    # Open and reset streams faster than they can be answered (CVE-2023-44487).
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/delay/1000")]
    for _ in range(1200):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, headers, end_stream=True)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    c.pump(lambda: c.goaway is not None, timeout=10)
    assert c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_streams_beyond_the_concurrency_limit_are_refused(h2proxy):
    c = h2proxy()
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 200)
    # Ignore the advertised limit on our side, to see the server enforce it.
    c.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
    c.conn.remote_settings.acknowledge()
    ids = [c.request("/delay/500") for _ in range(210)]
    c.pump(lambda: all(i in c.ended or i in c.resets for i in ids), timeout=15)
    refused = [i for i in ids if c.resets.get(i) == ErrorCodes.REFUSED_STREAM]
    assert len(refused) == 10
    assert all(c.headers[i][":status"] == "200" for i in ids if i not in refused)


@pytest.mark.parametrize(
    "frame, code",
    [
        ((0x8, 0x0, 0, struct.pack(">I", 0x7FFFFFFF)), ErrorCodes.FLOW_CONTROL_ERROR),  # window overflow
        ((0x6, 0x0, 0, b"short"), ErrorCodes.FRAME_SIZE_ERROR),  # PING of 5 bytes
        ((0x9, 0x4, 1, b""), ErrorCodes.PROTOCOL_ERROR),  # CONTINUATION without HEADERS
        ((0x0, 0x1, 9, b"x"), ErrorCodes.PROTOCOL_ERROR),  # DATA on an idle stream
        ((0x5, 0x4, 1, b"\x00\x00\x00\x02"), ErrorCodes.PROTOCOL_ERROR),  # PUSH_PROMISE from a client
        ((0x1, 0x5, 1, b"\xff\xff\xff"), ErrorCodes.COMPRESSION_ERROR),  # undecodable header block
    ],
)
def test_connection_errors_end_with_goaway(h2proxy, frame, code):
    c = h2proxy()
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 200)
    c.send_raw(*frame)
    c.pump(lambda: c.goaway is not None)
    assert c.goaway.error_code == code
    c.pump(lambda: c.closed)
