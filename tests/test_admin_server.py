"""The admin server around the routes: binding, limits, slow clients, and closing."""

from __future__ import annotations

import json
import signal
import socket

import httpx
import pytest

from conftest import one_service, refuses_connections, wait_until, wait_until_read_by_peer
from meshcore import BindError, Proxy
from meshcore.admin.server import KEEP_ALIVE_SECONDS, MAX_CONNECTIONS


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
        assert len(held) < MAX_CONNECTIONS
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
    held = [socket.create_connection(p.admin_address) for _ in range(MAX_CONNECTIONS)]
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
        s.settimeout(KEEP_ALIVE_SECONDS + 10)
        assert s.recv(1) == b""  # closed by the admin, not by this timeout


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
