"""Opaque TCP: pinned, detected, and the detection timeout for server-first protocols."""

from __future__ import annotations

import socket
import time

import httpx

from conftest import one_service


def opaque_config(target: str, protocol: str = "opaque", **listener) -> dict:
    return {
        "listeners": [
            {"name": "tcp", "bind": "127.0.0.1:0", "protocol": protocol, "service": "echo", **listener}
        ],
        "services": [{"name": "echo", "endpoints": [{"addr": target}]}],
    }


def roundtrip(addr, payload: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as s:
        out = b""
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError, OSError) as e:
            # A refused target makes the proxy drop the client, possibly before our own
            # half-close (ENOTCONN) or mid-read (reset): either way the connection is closed.
            if isinstance(e, socket.timeout):
                raise
        return out


def test_pinned_opaque_forwards_bytes(tcp_echo, proxy):
    echo = tcp_echo()
    p = proxy(opaque_config(echo.addr))
    payload = bytes(range(256)) * 4000
    assert roundtrip(p.addresses["tcp"], payload) == payload
    metrics = p.metrics()
    assert f'tcp_read_bytes_total{{direction="outbound",listener="tcp"}} {len(payload)}' in metrics
    assert f'tcp_write_bytes_total{{direction="outbound",listener="tcp"}} {len(payload)}' in metrics


def test_auto_detects_non_http_as_opaque(tcp_echo, proxy):
    echo = tcp_echo()
    p = proxy(opaque_config(echo.addr, protocol="auto"))
    # Binary bytes (a TLS-like record) are not HTTP: forwarded untouched.
    payload = b"\x16\x03\x01\x00\x05hello-binary"
    assert roundtrip(p.addresses["tcp"], payload) == payload


def test_silent_client_falls_back_to_opaque_after_detect_timeout(tcp_echo, proxy):
    greeter = tcp_echo(greeting=b"220 server speaks first\r\n")
    p = proxy(opaque_config(greeter.addr, protocol="auto", detect_timeout="300ms"))
    started = time.monotonic()  # before connecting: the proxy's timer cannot start earlier
    with socket.create_connection(p.addresses["tcp"], timeout=5) as s:
        greeting = s.recv(100)
        waited = time.monotonic() - started
    assert greeting == b"220 server speaks first\r\n"
    # Never before the detect timeout (a lower bound, which a busy machine only lengthens).
    assert waited >= 0.25


def test_auto_listener_serves_http_and_tcp_on_one_port(tcp_echo, backend, proxy):
    echo = tcp_echo()
    cfg = one_service([backend("web").addr])
    cfg["listeners"][0]["service"] = "echo"
    cfg["services"].append({"name": "echo", "endpoints": [{"addr": echo.addr}]})
    p = proxy(cfg)
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "web"
    assert roundtrip(p.addresses["outbound"], b"\x00\x01 not http \n") == b"\x00\x01 not http \n"


def test_opaque_connect_failure_closes_client(proxy):
    from conftest import closed_port

    p = proxy(opaque_config(f"127.0.0.1:{closed_port()}"))
    assert roundtrip(p.addresses["tcp"], b"hello") == b""
