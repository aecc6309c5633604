"""Start, stop, drain, bind errors, the panic boundary, and the GIL."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

import meshcore
from conftest import one_service
from meshcore import BindError, MeshcoreError, Proxy


def test_graceful_drain_loses_no_in_flight_request(backend, proxy):
    p = proxy(one_service([backend().addr]))
    url = p.url("outbound", "/delay/800")
    results: list[int] = []

    def slow_request():
        results.append(httpx.get(url, timeout=10).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all five are in flight
    assert p.open_connections() == 5
    started = time.monotonic()
    p.stop(grace=5)
    took = time.monotonic() - started
    for t in threads:
        t.join()
    assert results == [200] * 5
    assert took < 4, "stop() should return as soon as the in-flight requests finish"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_stop_gives_up_after_grace(backend, proxy):
    p = proxy(one_service([backend().addr]))
    outcome: list[object] = []

    def stuck_request():
        try:
            outcome.append(httpx.get(p.url("outbound", "/delay/5000"), timeout=10).status_code)
        except httpx.HTTPError as e:
            outcome.append(e)

    t = threading.Thread(target=stuck_request, daemon=True)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    p.stop(grace=0.5)
    assert time.monotonic() - started < 2
    t.join(10)
    # The request outlived the grace period, so it was cut off.
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


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


def test_interpreter_is_not_blocked_while_serving(backend, proxy):
    p = proxy(one_service([backend().addr]))
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    with httpx.Client() as c:
        for _ in range(50):
            assert c.get(p.url("outbound")).status_code == 200
    stop.set()
    t.join()
    assert ticks > 20


def test_double_start_is_an_error(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with pytest.raises(MeshcoreError, match="already started"):
        p.start()
