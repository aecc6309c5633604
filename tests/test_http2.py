"""HTTP/2 (h2c prior knowledge) on both sides, and translation between versions."""

from __future__ import annotations

import httpx
import pytest

from asgi_backend import AsgiBackend
from conftest import one_service


@pytest.fixture
def asgi():
    b = AsgiBackend()
    yield b
    b.stop()


def h2_client() -> httpx.Client:
    return httpx.Client(http1=False, http2=True)


def test_h2_client_to_h1_backend(backend, proxy):
    p = proxy(one_service([backend("web-1").addr], protocol="http1"))
    with h2_client() as c:
        responses = [c.get(p.url("outbound", f"/n/{i}")) for i in range(10)]
    for i, r in enumerate(responses):
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert r.text == f"hello from web-1 (zone-a) path=/n/{i}\n"


def test_h2_client_to_h1_backend_keeps_authority_as_host(backend, proxy):
    p = proxy(one_service([backend().addr], protocol="http1"))
    with h2_client() as c:
        seen = c.get(p.url("outbound", "/headers"), headers={"host": "web.local"}).json()
    assert seen["host"] == "web.local"


def test_auto_keeps_h2_end_to_end(asgi, proxy):
    p = proxy(one_service([asgi.addr], protocol="auto"))
    with h2_client() as c:
        r = c.post(p.url("outbound", "/x"), content=b"a" * 100_000, headers={"host": "svc.local"})
    info = r.json()
    assert info["http_version"] == "2"
    assert info["body_len"] == 100_000
    assert info["headers"]["host"] == "svc.local"


def test_auto_keeps_h1_end_to_end(asgi, proxy):
    p = proxy(one_service([asgi.addr], protocol="auto"))
    info = httpx.get(p.url("outbound", "/x")).json()
    assert info["http_version"] == "1.1"


def test_h1_client_to_h2_upstream(asgi, proxy):
    p = proxy(one_service([asgi.addr], protocol="http2"))
    with httpx.Client() as c:
        infos = [
            c.get(p.url("outbound", f"/p{i}"), headers={"host": "svc.local:80"}).json() for i in range(5)
        ]
    assert all(i["http_version"] == "2" for i in infos)
    assert [i["path"] for i in infos] == [f"/p{i}" for i in range(5)]


def test_many_concurrent_streams_over_h2_both_sides(asgi, proxy):
    from meshcore import bench

    p = proxy(one_service([asgi.addr], protocol="http2"))
    # One client connection carrying 16 streams at a time (meshcore's own load generator:
    # httpx's sync HTTP/2 client is not safe to share across threads).
    r = bench.run(p.url("outbound", "/x"), duration=1, connections=1, http2=True, streams=16)
    # Each of the 16 streams sends at once and again as soon as answered: at least 16, all answered.
    assert r.errors == {} and r.statuses == {200: r.requests} and r.requests >= 16
    assert 'tcp_open_total{direction="outbound",listener="outbound"} 1' in p.metrics()


def test_pinned_http2_listener(backend, proxy):
    p = proxy(one_service([backend().addr], listener_protocol="http2"))
    with h2_client() as c:
        assert c.get(p.url("outbound")).status_code == 200
