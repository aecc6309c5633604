"""A raw HTTP/2 client for tests: the `h2` library over a plain socket,
recording what each stream received; frames can also be sent by hand."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Optional

import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)


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
        self.settings_acked = False
        # Every frame as received (type, flags, stream, payload): the h2
        # library drops some, such as RST_STREAM on a stream it saw close.
        self.raw_frames: list[tuple[int, int, int, bytes]] = []
        self._raw = b""
        self.library_refused = False

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
            self._tap(chunk)
            if self.library_refused:
                continue  # raw frames only from here on
            try:
                events = self.conn.receive_data(chunk)
            except h2.exceptions.ProtocolError:
                # A frame the library refuses (e.g. a reset of a stream it never
                # opened): the raw frames still record it, and nothing the
                # library would now say (its GOAWAY) is sent.
                self.library_refused = True
                continue
            for event in events:
                self.record(event)
            self.flush()

    def _tap(self, chunk: bytes) -> None:
        self._raw += chunk
        while len(self._raw) >= 9:
            length = int.from_bytes(self._raw[:3], "big")
            if len(self._raw) < 9 + length:
                return
            kind, flags = self._raw[3], self._raw[4]
            stream = int.from_bytes(self._raw[5:9], "big") & 0x7FFFFFFF
            self.raw_frames.append((kind, flags, stream, self._raw[9 : 9 + length]))
            self._raw = self._raw[9 + length :]

    def reset_code(self, stream: int) -> Optional[int]:
        """The error code of the last RST_STREAM received on `stream`, if any."""
        codes = [
            int.from_bytes(p[:4], "big") for kind, _, s, p in self.raw_frames if kind == 0x3 and s == stream
        ]
        return codes[-1] if codes else None

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
        elif isinstance(event, SettingsAcknowledged):
            self.settings_acked = True

    def send_body(self, sid: int, size: int, chunk: int = 16000, pad: Optional[int] = None) -> None:
        """Sends `size` bytes on `sid` in DATA frames, waiting for window as needed."""
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            need = n + (pad + 1 if pad is not None else 0)
            if self.conn.local_flow_control_window(sid) < need:
                self.pump(lambda: self.conn.local_flow_control_window(sid) >= need)  # noqa: B023
                continue
            self.conn.send_data(sid, b"b" * n, end_stream=sent + n == size, pad_length=pad)
            sent += n
            self.flush()

    def send_raw(self, frame_type: int, flags: int, stream: int, payload: bytes) -> None:
        self.sock.sendall(
            struct.pack(">I", len(payload))[1:]
            + bytes([frame_type, flags])
            + struct.pack(">I", stream)
            + payload
        )

    def close(self) -> None:
        self.sock.close()
