"""Malformed input gets a 4xx (or a closed connection) and never hurts the proxy."""

from __future__ import annotations

import socket

import httpx
import pytest

from conftest import one_service, wait_until_read_by_peer


def raw(addr: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    """Sends `data` and reads until the proxy closes the connection, which it
    must do: still open after `timeout` (a deadline for a hang) fails the test."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            raise AssertionError(
                f"the proxy left the connection open; got {b''.join(chunks)[:200]!r}"
            ) from None
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """HTTP/2 frames as (type, stream, payload)."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


BAD_REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello", 400),
    (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize(
    "request_bytes, status", BAD_REQUESTS, ids=["bad-length", "dup-length", "bad-name", "huge-header"]
)
def test_malformed_http1_gets_4xx_and_proxy_keeps_serving(backend, proxy, request_bytes, status):
    b = backend()
    p = proxy(one_service([b.addr]))
    reply = raw(p.addresses["outbound"], request_bytes)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:200]
    assert b.requests == 0
    assert httpx.get(p.url("outbound")).status_code == 200


def test_bad_request_line_is_400(backend, proxy):
    p = proxy(one_service([backend().addr], listener_protocol="http1"))
    reply = raw(p.addresses["outbound"], b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert httpx.get(p.url("outbound")).status_code == 200


def test_h2_garbage_after_preface_closes_connection_only(backend, proxy):
    p = proxy(one_service([backend().addr]))
    reply = raw(p.addresses["outbound"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64)
    # A frame header claiming 16 MiB: GOAWAY(FRAME_SIZE_ERROR), then the proxy closes.
    kind, stream, payload = frames(reply)[-1]
    assert (kind, stream, int.from_bytes(payload[4:8], "big")) == (0x7, 0, 0x6)
    with httpx.Client(http1=False, http2=True) as c:
        assert c.get(p.url("outbound")).status_code == 200


def test_client_vanishing_mid_request_is_harmless(backend, proxy):
    p = proxy(one_service([backend().addr]))
    for _ in range(20):
        with socket.create_connection(p.addresses["outbound"]) as s:
            s.sendall(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
    assert httpx.get(p.url("outbound")).status_code == 200


def test_bad_chunk_after_headers_is_contained(backend, proxy):
    # A broken chunked body is only seen once the request is on its way upstream;
    # the proxy must end that exchange and keep serving everyone else.
    p = proxy(one_service([backend().addr]))
    reply = raw(
        p.addresses["outbound"],
        b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    # Answered 400 and closed, rather than left waiting for a body that cannot come.
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"\r\nmeshcore-error: request body error\r\n" in reply
    assert httpx.get(p.url("outbound")).status_code == 200


def test_client_too_slow_with_headers_is_cut_off(backend, proxy):
    # Slowloris: a client that never finishes its headers must not hold a
    # connection for ever. A client that is merely slow, within the limit, is served.
    cfg = one_service([backend().addr], listener_protocol="http1")
    cfg["listeners"][0]["header_read_timeout"] = "1s"
    p = proxy(cfg)
    addr = p.addresses["outbound"]
    # Cut off: closed with no answer, long before the client's own 10 s deadline.
    assert raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""
    with socket.create_connection(addr, timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        # The proxy has the unfinished head and waits for the rest, which
        # comes well within the 1 s limit.
        wait_until_read_by_peer(s)
        s.sendall(b"Connection: close\r\n\r\n")
        assert raw_reply(s).startswith(b"HTTP/1.1 200")


def raw_reply(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
