"""Malformed input gets a 4xx (or a closed connection) and never hurts the proxy."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from conftest import one_service


def raw(addr: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


BAD_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n",
]


@pytest.mark.parametrize(
    "request_bytes", BAD_REQUESTS, ids=["bad-length", "dup-length", "bad-name", "huge-header"]
)
def test_malformed_http1_gets_4xx_and_proxy_keeps_serving(backend, proxy, request_bytes):
    b = backend()
    p = proxy(one_service([b.addr]))
    reply = raw(p.addresses["outbound"], request_bytes)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]
    assert httpx.get(p.url("outbound")).status_code == 200


def test_bad_request_line_is_400(backend, proxy):
    p = proxy(one_service([backend().addr], listener_protocol="http1"))
    reply = raw(p.addresses["outbound"], b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert httpx.get(p.url("outbound")).status_code == 200


def test_h2_garbage_after_preface_closes_connection_only(backend, proxy):
    p = proxy(one_service([backend().addr]))
    started = time.monotonic()
    raw(p.addresses["outbound"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64, timeout=2)
    assert time.monotonic() - started < 1.5, "the proxy left the broken connection open"
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
    started = time.monotonic()
    raw(
        p.addresses["outbound"],
        b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        timeout=2,
    )
    assert time.monotonic() - started < 1.5, "the proxy left the broken exchange open"
    assert httpx.get(p.url("outbound")).status_code == 200


def test_client_too_slow_with_headers_is_cut_off(backend, proxy):
    # Slowloris: a client that never finishes its headers must not hold a
    # connection for ever. A client that is merely slow, within the limit, is served.
    cfg = one_service([backend().addr], listener_protocol="http1")
    cfg["listeners"][0]["header_read_timeout"] = "1s"
    p = proxy(cfg)
    addr = p.addresses["outbound"]
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        leftover = s.recv(4096)  # blocks until the proxy gives up on the headers
        waited = time.monotonic() - started
    assert not leftover.startswith(b"HTTP/1.1 200"), leftover[:100]
    # 1 s limit, checked once a second: cut between 1 and 2 s (with scheduling slack).
    assert 0.9 <= waited < 4, waited
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        s.sendall(b"Connection: close\r\n\r\n")
        assert raw_reply(s).startswith(b"HTTP/1.1 200")


def raw_reply(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
