"""The admin server around the routes: binding, limits, slow clients, and closing."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from conftest import one_service, refuses_connections, wait_until, wait_until_read_by_peer
from meshcore import BindError, Proxy
from meshcore.admin import AdminServer
from meshcore.admin.server import LIMITS


@pytest.fixture
def admin(backend, proxy):
    p = proxy(one_service([backend().addr], admin=True))
    host, port = p.admin_address
    return p, f"http://{host}:{port}"


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096) or pytest.fail(f"closed before a whole head: {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += s.recv(4096) or pytest.fail("closed mid-body")
    return int(lines[0].split()[1]), body


def test_a_port_in_use_is_a_bind_error(backend):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    cfg = one_service([backend().addr])
    cfg["admin"] = f"127.0.0.1:{port}"
    refusal = rf"^admin cannot bind 127\.0\.0\.1:{port}: Address already in use$"
    try:
        with pytest.raises(BindError, match=refusal):
            Proxy(cfg).start()
    finally:
        taken.close()


def test_the_admin_thread_leaves_signal_handlers_alone(admin):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _p, url = admin
    assert httpx.get(f"{url}/ready").status_code == 200  # serving, so uvicorn has started
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_the_admin_keeps_answering_while_slow_clients_hold_connections(admin):
    # An event loop, not a thread per connection: slow clients must not hold up the others.
    p, url = admin
    addr = p.admin_address
    held: list[socket.socket] = []
    try:
        for _ in range(40):  # a request head begun and never finished
            s = socket.create_connection(addr)
            s.sendall(b"GET /metrics HTTP/1.1\r\nhost: admin\r\n")
            held.append(s)
        for s in held:
            wait_until_read_by_peer(s)
        waiting = []
        for _ in range(40):  # a body promised and not yet sent
            s = socket.create_connection(addr)
            s.sendall(b"POST /plugins/reload HTTP/1.1\r\nhost: admin\r\n")
            s.sendall(b"content-length: 2\r\nexpect: 100-continue\r\n\r\n")
            waiting.append(s)
        for s in waiting:  # the admin is reading each body
            assert s.recv(4096).startswith(b"HTTP/1.1 100 ")
        held += waiting
        held += [socket.create_connection(addr) for _ in range(20)]  # connected, silent
        assert len(held) < LIMITS.max_connections
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{url}/ready").text == "ready\n"
            assert "request_total" in client.get(f"{url}/metrics").text
            assert client.get(f"{url}/config").json()["services"][0]["name"] == "web"
        # The slow bodies arrive at last, and each gets its answer.
        for s in waiting:
            s.sendall(b"{}")
        for s in waiting:
            status, body = read_response(s)
            assert (status, json.loads(body)) == (200, {"reloaded": True, "errors": {}})
    finally:
        for s in held:
            s.close()


def test_past_max_connections_the_admin_answers_503_until_some_close(admin):
    p, url = admin
    held = [socket.create_connection(p.admin_address) for _ in range(LIMITS.max_connections)]
    try:
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 503, what="the connection cap")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, what="room for a connection")


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(admin):
    p, _url = admin
    with socket.create_connection(p.admin_address) as s:
        s.sendall(b"GET /live HTTP/1.1\r\nhost: admin\r\n\r\n")
        assert read_response(s) == (200, b"ready\n")
        s.settimeout(LIMITS.keep_alive + 10)
        assert s.recv(1) == b""  # closed by the admin, not by this timeout


@pytest.fixture
def strict_admin(backend, proxy) -> Iterator[AdminServer]:
    """An admin server with the admin's limits but a short head deadline (10 s by default)."""
    p = proxy(one_service([backend().addr]))
    server = AdminServer(p, "127.0.0.1:0", limits=replace(LIMITS, head_timeout=0.5, max_connections=4))
    try:
        yield server
    finally:
        server.close()


def closed_by_admin(s: socket.socket) -> bool:
    """Reads until the admin closes the connection (a socket timeout fails the test); whether it
    did so without answering."""
    s.settimeout(10)
    received = b""
    while True:
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            return received == b""
        if not data:
            return received == b""
        received += data


def test_a_client_that_never_finishes_its_head_is_cut_off(strict_admin):
    url = "http://{}:{}".format(*strict_admin.address)
    begun = socket.create_connection(strict_admin.address)
    silent = socket.create_connection(strict_admin.address)
    with begun, silent:
        started = time.monotonic()
        begun.sendall(b"GET /ready HTTP/1.1\r\nhost: admin\r\nx-pad: aaaa")
        wait_until_read_by_peer(begun)
        assert httpx.get(f"{url}/ready").text == "ready\n"  # served while the two hold connections
        assert closed_by_admin(begun)
        assert closed_by_admin(silent)
        assert time.monotonic() - started >= 0.4  # by the deadline, not at once


def test_the_head_deadline_runs_again_after_each_response(strict_admin):
    with socket.create_connection(strict_admin.address) as s:
        s.sendall(b"GET /live HTTP/1.1\r\nhost: admin\r\n\r\n")
        assert read_response(s) == (200, b"ready\n")
        started = time.monotonic()
        s.sendall(b"GET /live HTTP/1.1\r\n")  # the next head, begun well within the keep-alive
        assert closed_by_admin(s)
        assert time.monotonic() - started < LIMITS.keep_alive  # by the head deadline, not keep-alive


def test_a_head_trickled_byte_by_byte_is_cut_off(strict_admin):
    head = b"GET /live HTTP/1.1\r\nhost: admin\r\nx-pad: " + b"a" * 4000
    with socket.create_connection(strict_admin.address) as s:
        s.settimeout(0.05)  # how long to wait for the admin's close between two bytes
        started, sent = time.monotonic(), 0
        while sent < len(head):
            assert time.monotonic() - started < 10, "the admin never cut the slow client off"
            try:
                s.sendall(head[sent : sent + 1])
                sent += 1
                if s.recv(1) == b"":
                    break
                pytest.fail("the admin answered a head that never ended")
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert 2 < sent < len(head)


def test_silent_clients_cannot_keep_the_admin_full(strict_admin):
    url = "http://{}:{}".format(*strict_admin.address)
    # Silent clients take all the connections but the one a request needs to be told 503.
    held = [socket.create_connection(strict_admin.address) for _ in range(3)]
    try:
        assert httpx.get(f"{url}/ready").status_code == 503
        for s in held:
            assert closed_by_admin(s)
        assert httpx.get(f"{url}/ready").status_code == 200  # free again, though no client closed
    finally:
        for s in held:
            s.close()


def test_stop_closes_the_admin_with_clients_still_connected(backend):
    p = Proxy(one_service([backend().addr], admin=True)).start()
    addr = p.admin_address
    silent = [socket.create_connection(addr) for _ in range(5)]
    begun = socket.create_connection(addr)
    begun.sendall(b"GET /ready HTTP/1.1\r\n")
    wait_until_read_by_peer(begun)
    idle = socket.create_connection(addr)
    idle.sendall(b"GET /live HTTP/1.1\r\nhost: admin\r\n\r\n")
    assert read_response(idle) == (200, b"ready\n")
    p.stop(grace=0.1)
    assert refuses_connections(addr)
    for s in [*silent, begun, idle]:
        s.settimeout(10)
        assert s.recv(1) == b""
        s.close()


class _StopsWhileAnswering(Proxy):
    """A proxy whose /plugins handler stops the proxy itself, and so closes the admin server
    from inside one of its own requests."""

    def plugins(self):
        self.stop(grace=0.1)
        return []


def test_closing_the_admin_from_its_own_request_does_not_deadlock(backend):
    p = _StopsWhileAnswering(one_service([backend().addr], admin=True)).start()
    host, port = p.admin_address
    try:
        r = httpx.get(f"http://{host}:{port}/plugins", timeout=10)
        assert r.json() == {"plugins": []}
        assert p.wait(5) and not p.running
        wait_until(lambda: refuses_connections((host, port)), what="the admin port to close")
    finally:
        p.stop(grace=0.1)
