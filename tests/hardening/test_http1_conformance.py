"""Defects 7, 10 and 12: Host handling (RFC 9112 3.2), transfer codings,
CONNECT and authority-form, and upgrades that would hide requests from policy."""

from __future__ import annotations

import socket

import pytest

from hardening_tools import Recorder, exchange, guarded_config, status_of


@pytest.fixture
def routed(proxy):
    upstream = Recorder()
    internal = Recorder()
    cfg = {
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0"}],
        "routes": [
            {"listener": "outbound", "host": "internal.local", "backends": [{"service": "internal"}]},
            {"listener": "outbound", "backends": [{"service": "app"}]},
        ],
        "services": [
            {"name": "app", "protocol": "http1", "endpoints": [{"addr": upstream.addr}]},
            {"name": "internal", "protocol": "http1", "endpoints": [{"addr": internal.addr}]},
        ],
    }
    p = proxy(cfg)
    yield p.addresses["outbound"], upstream, internal
    upstream.close()
    internal.close()


@pytest.mark.parametrize(
    "head",
    [
        "GET / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
        "GET / HTTP/1.1\r\nHost: a, b\r\n",
        "GET / HTTP/1.1\r\nHost: internal.local@pub.example\r\n",
        "GET http://internal.local:x@pub.example/ HTTP/1.1\r\nHost: pub.example\r\n",
        "GET pub.example:80 HTTP/1.1\r\nHost: pub.example\r\n",
    ],
    ids=["no-host", "two-hosts", "host-list", "host-userinfo", "absolute-userinfo", "authority-form"],
)
def test_bad_hosts_and_targets_get_400_and_reach_no_upstream(routed, head):
    addr, upstream, internal = routed
    reply = exchange(addr, (head + "Connection: close\r\n\r\n").encode())
    assert status_of(reply) == 400, reply[:200]
    assert upstream.lines == [] and internal.lines == []


def test_a_good_host_and_http10_without_host_are_served(routed):
    addr, upstream, internal = routed
    assert (
        status_of(exchange(addr, b"GET /a HTTP/1.1\r\nHost: internal.local:80\r\nConnection: close\r\n\r\n"))
        == 200
    )
    assert status_of(exchange(addr, b"GET /b HTTP/1.0\r\n\r\n")) == 200
    assert internal.paths() == ["/a"] and upstream.paths() == ["/b"]


def test_unknown_transfer_coding_is_501(routed):
    addr, upstream, _ = routed
    raw = (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    assert status_of(exchange(addr, raw)) == 501
    assert upstream.lines == []


def test_connect_is_refused_with_501(routed):
    addr, upstream, _ = routed
    reply = exchange(addr, b"CONNECT pub.example:443 HTTP/1.1\r\nHost: pub.example:443\r\n\r\n")
    assert status_of(reply) == 501
    assert upstream.lines == []


def test_an_h2c_upgrade_is_forwarded_as_a_plain_request(proxy):
    """h2c smuggling: were the upgrade tunnelled, a client could speak HTTP/2 to
    /admin inside a tunnel that policy saw only as a request for /public."""
    upstream = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = upstream.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            seen.append(head)
            # An upstream that would switch if asked.
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")

    import threading

    threading.Thread(target=serve, daemon=True).start()
    p = proxy(guarded_config(f"127.0.0.1:{upstream.getsockname()[1]}"))
    raw = (
        b"GET /public/ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    reply = exchange(p.addresses["inbound"], raw)
    upstream.close()
    head = seen[0].lower()
    assert b"upgrade" not in head and b"http2-settings" not in head, head
    # The upstream's 101 answers an upgrade nobody asked it for: refused.
    assert status_of(reply) == 502
