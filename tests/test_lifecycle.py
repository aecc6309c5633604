"""Start, stop, drain, bind errors, the panic boundary, and the GIL."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

import meshcore
from conftest import one_service, refuses_connections, wait_until
from meshcore import BindError, MeshcoreError, Proxy

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def held_upstream(upstream, release: threading.Event):
    """An upstream that answers each request only once `release` is set."""
    return upstream(lambda *_: OK if release.wait(30) else None)


def test_graceful_drain_loses_no_in_flight_request(upstream, proxy):
    release = threading.Event()
    u = held_upstream(upstream, release)
    p = proxy(one_service([u.addr]))
    url, addr = p.url("outbound", "/slow"), p.addresses["outbound"]
    results: list[int] = []

    def slow_request():
        results.append(httpx.get(url, timeout=30).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(5)]
    for t in threads:
        t.start()
    stopper = threading.Thread(target=p.stop, kwargs={"grace": 60})
    try:
        wait_until(lambda: len(u.heads) == 5, what="all five requests to be held at the upstream")
        assert p.open_connections() == 5
        stopper.start()
        wait_until(lambda: refuses_connections(addr), what="the drain to start")
        assert stopper.is_alive(), "stop() returned with five requests in flight"
    finally:
        release.set()
    # stop() returns once the in-flight requests are answered, not after the 60 s grace.
    stopper.join(30)
    assert not stopper.is_alive(), "stop() waited out the grace after the requests were answered"
    for t in threads:
        t.join(10)
    assert results == [200] * 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_stop_gives_up_after_grace(upstream, proxy):
    release = threading.Event()  # set only after the test: the request outlives the grace
    u = held_upstream(upstream, release)
    p = proxy(one_service([u.addr]))
    outcome: list[object] = []

    def stuck_request():
        try:
            outcome.append(httpx.get(p.url("outbound", "/stuck"), timeout=30).status_code)
        except httpx.HTTPError as e:
            outcome.append(e)

    t = threading.Thread(target=stuck_request, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(u.heads) == 1, what="the request to be held at the upstream")
        p.stop(grace=0.5)
        t.join(10)
        # The request outlived the grace period (its upstream never answered), so it was cut off.
        assert isinstance(outcome[0], httpx.RemoteProtocolError), outcome
    finally:
        release.set()


def test_context_manager_and_addresses(backend):
    with Proxy(one_service([backend().addr])) as p:
        host, port = p.addresses["outbound"]
        assert host == "127.0.0.1" and port > 0
        assert httpx.get(p.url("outbound")).status_code == 200
        assert p.running
    assert not p.running


def test_bind_conflict_is_a_bind_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = one_service([])
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{port}"
    with pytest.raises(BindError, match=f"127.0.0.1:{port}"):
        Proxy(cfg).start()
    taken.close()


def test_rust_panic_becomes_meshcore_error():
    with pytest.raises(MeshcoreError, match="deliberate test panic"):
        meshcore._core._panic_for_test()
    # The interpreter and the extension are fine afterwards.
    with pytest.raises(MeshcoreError, match="deliberate test panic"):
        meshcore._core._panic_for_test()
    p = Proxy(one_service([])).start()
    assert p.running
    p.stop(grace=0.1)


class Stamp:
    """A plugin, so that serving a request calls into Python."""

    def on_request(self, req):
        req.headers["x-stamped"] = "1"


def test_interpreter_is_not_blocked_while_serving(upstream, proxy):
    # A request is held inside the proxy, after its plugin hook ran; meanwhile
    # this thread runs Python (polling, calling the proxy) and releases it. A
    # proxy that kept the GIL while serving would stall it, and the request
    # with it, until the deadlines.
    release = threading.Event()
    u = held_upstream(upstream, release)
    p = Proxy(one_service([u.addr]))
    p.add_plugin(Stamp())
    p.start()
    result: list[int] = []
    client = threading.Thread(
        target=lambda: result.append(httpx.get(p.url("outbound"), timeout=30).status_code)
    )
    try:
        client.start()
        wait_until(lambda: len(u.heads) == 1, what="the request to reach the upstream")
        assert b"\r\nx-stamped: 1" in u.heads[0]
        assert p.open_connections() == 1 and "request_total" in p.metrics()
        release.set()
        client.join(30)
        assert result == [200]
    finally:
        release.set()
        p.stop(grace=0.5)


def test_double_start_is_an_error(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with pytest.raises(MeshcoreError, match="already started"):
        p.start()


def read_answer(sock: socket.socket) -> bytes:
    """The head of one small answer with a content-length body (read whole)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if b"content-length" in line
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_a_request_on_an_idle_connection_just_after_the_drain_starts_is_answered_with_close(backend, proxy):
    # Closing idle keep-alive connections the moment the drain starts would close them under a
    # request already on its way; they linger briefly and answer it with `Connection: close`.
    p = proxy(one_service([backend().addr]))
    addr = p.addresses["outbound"]
    get = b"GET / HTTP/1.1\r\nhost: web\r\n\r\n"
    with socket.create_connection(addr) as s:
        s.sendall(get)
        assert read_answer(s).startswith(b"HTTP/1.1 200")
        stopper = threading.Thread(target=p.stop, kwargs={"grace": 30})
        stopper.start()
        wait_until(lambda: refuses_connections(addr), what="the drain to start")
        s.sendall(get)
        head = read_answer(s)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower(), head
        s.settimeout(10)
        assert s.recv(10) == b"", "closed after that answer"
    stopper.join(30)
    assert not stopper.is_alive()
