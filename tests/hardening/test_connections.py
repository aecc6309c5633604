"""Defect 2: idle HTTP/2 connections are closed, a connection that never
sends its preface is cut off, and `max_connections` makes room by closing
the longest-idle connection first, or refuses when none is idle."""

from __future__ import annotations

import re
import socket

import httpx
from h2.errors import ErrorCodes

from conftest import metric, one_service, wait_until
from h2_client import Client
from hardening_tools import connection_budget, open_fds, worker_cpu

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def errors(p, kind: str) -> float:
    m = re.search(rf'^tcp_errors_total{{[^}}]*error="{kind}"}} (\S+)$', p.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """Reads until the proxy closes the connection; False if it stays open."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


def h2_listener(backend, **listener):
    cfg = one_service([backend().addr], listener_protocol="http2", admin=True)
    cfg["listeners"][0].update(listener)
    return cfg


def test_an_idle_http2_connection_gets_goaway_and_is_closed(backend, proxy):
    p = proxy(h2_listener(backend, idle_timeout="1s"))
    c = Client(p.addresses["outbound"])
    sid = c.request("/")
    c.pump(lambda: sid in c.ended)
    # With no stream open, the connection says goodbye on its own.
    c.pump(lambda: c.goaway is not None, timeout=10)
    assert c.goaway.error_code == ErrorCodes.NO_ERROR
    assert c.goaway.last_stream_id == sid
    assert closed_by_peer(c.sock, 5)


def test_a_connection_that_sends_no_preface_is_cut_off(backend, proxy):
    p = proxy(h2_listener(backend, header_read_timeout="1s"))
    s = socket.create_connection(p.addresses["outbound"])
    s.sendall(PREFACE[:10])  # a start, never finished
    assert closed_by_peer(s, 10)
    s.close()
    wait_until(lambda: errors(p, "http2_preface_timeout") == 1)


def counter(p, name: str) -> float:
    m = re.search(rf'^{name}{{direction="outbound",listener="outbound"}} (\S+)$', p.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def test_past_max_connections_the_longest_idle_make_room(backend, proxy):
    p = proxy(h2_listener(backend, max_connections=20))
    idle = []
    for _ in range(20):
        s = socket.create_connection(p.addresses["outbound"])
        s.sendall(PREFACE)  # the attack: 33 bytes, then nothing
        idle.append(s)
    wait_until(lambda: counter(p, "tcp_open_total") == 20)
    # Normal clients are still served; each new connection evicts the
    # longest-idle one, which is always one of the attacker's.
    clients = [httpx.Client(http2=True, http1=False, timeout=5) for _ in range(5)]
    for client in clients:
        assert client.get(p.url("outbound", "/")).status_code == 200
    wait_until(lambda: errors(p, "max_connections_evicted") == 5)
    wait_until(lambda: counter(p, "tcp_close_total") == 5)  # GOAWAY, then closed
    closed = [s for s in idle if closed_by_peer(s, 0.05)]
    assert len(closed) == 5
    # The clients' own connections were kept: asking again opens none.
    for client in clients:
        assert client.get(p.url("outbound", "/again")).status_code == 200
    assert counter(p, "tcp_open_total") == 25
    for s in idle:
        s.close()
    for client in clients:
        client.close()


def test_past_max_connections_with_none_idle_new_ones_are_refused(proxy):
    # An upstream that takes connections and never answers: every request stays in progress.
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    cfg = one_service([f"127.0.0.1:{silent.getsockname()[1]}"], listener_protocol="http2", admin=True)
    cfg["listeners"][0]["max_connections"] = 3
    p = proxy(cfg)
    busy = [Client(p.addresses["outbound"]) for _ in range(3)]
    for c in busy:
        c.request("/")
        c.pump(lambda: c.settings_acked)  # noqa: B023
    wait_until(lambda: counter(p, "tcp_open_connections") == 3)
    # Each connection is busy once its stream is open: the SETTINGS ack can come before the
    # HEADERS were read, and an idle one would be evicted instead. A counted request is open.
    wait_until(lambda: metric(p.metrics(), "request_total") == 3)
    s = socket.create_connection(p.addresses["outbound"])
    assert closed_by_peer(s, 5)
    s.close()
    wait_until(lambda: errors(p, "max_connections_refused") == 1)
    assert errors(p, "max_connections_evicted") == 0
    for c in busy:
        c.close()
    silent.close()


def test_twenty_thousand_idle_connections_do_not_lock_the_listener_out(backend, proxy):
    """The reported attack, scaled to this machine: many more idle HTTP/2
    connections than max_connections; the listener keeps serving and the
    descriptors come back."""
    before = open_fds()
    p = proxy(h2_listener(backend, max_connections=200))
    cpu = worker_cpu()
    socks = []
    try:
        for _ in range(connection_budget(2000)):
            s = socket.create_connection(p.addresses["outbound"])
            s.sendall(PREFACE)
            socks.append(s)
        with httpx.Client(http2=True, http1=False, timeout=5) as client:
            assert client.get(p.url("outbound", "/")).status_code == 200
        wait_until(lambda: errors(p, "max_connections_evicted") >= len(socks) - 200)
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: 'tcp_open_connections{direction="outbound",listener="outbound"} 0' in p.metrics())
    # The proxy's own descriptors: listeners, admin, runtime; the attackers' are closed.
    assert open_fds() <= before + 20
    # Accepting, answering and evicting 2,000 connections: about a millisecond each at most.
    assert worker_cpu() - cpu < 2.0
