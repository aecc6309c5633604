"""HTTP/1.1 through the proxy: forwarding, routing, header hygiene and errors."""

from __future__ import annotations

import httpx

from conftest import closed_port, one_service


def test_get_reaches_backend_and_keeps_alive(backend, proxy):
    b = backend("web-1")
    p = proxy(one_service([b.addr]))
    with httpx.Client() as client:
        for i in range(5):
            r = client.get(p.url("outbound", f"/hello/{i}"))
            assert r.status_code == 200
            assert r.text == f"hello from web-1 (zone-a) path=/hello/{i}\n"
    assert b.requests == 5
    # One client connection carried all five requests.
    assert 'tcp_open_total{direction="outbound",listener="outbound"} 1' in p.metrics()


def test_post_body_is_echoed(backend, proxy):
    p = proxy(one_service([backend().addr]))
    body = b"meshcore" * 10_000
    r = httpx.post(p.url("outbound", "/echo"), content=body)
    assert r.status_code == 200
    assert r.content == body


def test_chunked_request_body_streams(backend, proxy):
    p = proxy(one_service([backend().addr]))

    def gen():
        for i in range(50):
            yield f"part-{i};".encode()

    r = httpx.post(p.url("outbound", "/echo"), content=gen())
    assert r.content == b"".join(f"part-{i};".encode() for i in range(50))


def test_hop_by_hop_headers_are_not_forwarded(backend, proxy):
    p = proxy(one_service([backend().addr]))
    r = httpx.get(
        p.url("outbound", "/headers"),
        headers={
            "Connection": "keep-alive, x-private",
            "x-private": "secret",
            "x-kept": "yes",
            "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive",
        },
    )
    seen = r.json()
    assert seen["x-kept"] == "yes"
    for h in ("x-private", "keep-alive", "proxy-connection"):
        assert h not in seen, h
    assert seen["host"].startswith("127.0.0.1:")


def test_routes_match_host_path_and_headers_first_match_wins(backend, proxy):
    api, canary, web = backend("api"), backend("canary"), backend("web")
    cfg = {
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [
            {"listener": "out", "headers": {"x-canary": "1"}, "backends": [{"service": "canary"}]},
            {"listener": "out", "host": "api.local", "path_prefix": "/v1", "backends": [{"service": "api"}]},
            {"listener": "out", "host": "web.local", "backends": [{"service": "web"}]},
        ],
        "services": [
            {"name": n, "protocol": "http1", "endpoints": [{"addr": b.addr}]}
            for n, b in (("api", api), ("canary", canary), ("web", web))
        ],
    }
    p = proxy(cfg)
    url = p.url("out", "/v1/users")
    assert httpx.get(url, headers={"host": "api.local"}).headers["x-backend"] == "api"
    assert httpx.get(url, headers={"host": "API.local:8080"}).headers["x-backend"] == "api"
    assert httpx.get(url, headers={"host": "web.local"}).headers["x-backend"] == "web"
    assert httpx.get(url, headers={"host": "api.local", "x-canary": "1"}).headers["x-backend"] == "canary"
    # /v1x is not under the /v1 prefix, and no other route matches api.local.
    r = httpx.get(p.url("out", "/v1x"), headers={"host": "api.local"})
    assert r.status_code == 404
    assert r.headers["meshcore-error"] == "no route"


def test_no_endpoints_is_503(proxy):
    p = proxy(one_service([]))
    r = httpx.get(p.url("outbound"))
    assert r.status_code == 503
    assert r.headers["meshcore-error"] == "no endpoints"
    assert r.text == "no endpoints\n"


def test_connect_failure_is_502(proxy):
    p = proxy(one_service([f"127.0.0.1:{closed_port()}"]))
    r = httpx.get(p.url("outbound"))
    assert r.status_code == 502
    assert r.headers["meshcore-error"].startswith("connect failed")
    assert p.endpoints()["services"][0]["endpoints"][0]["failures"] == 1


def test_upstream_timeout_is_504(backend, proxy):
    p = proxy(one_service([backend().addr], route={"timeout": "200ms"}))
    r = httpx.get(p.url("outbound", "/delay/3000"), timeout=10)
    assert r.status_code == 504
    assert r.headers["meshcore-error"] == "upstream timeout"
    # A fast request on the same route is unaffected.
    assert httpx.get(p.url("outbound", "/fast")).status_code == 200


def test_status_codes_and_classification_reach_metrics(backend, proxy):
    p = proxy(one_service([backend().addr]))
    assert httpx.get(p.url("outbound", "/status/503")).status_code == 503
    assert httpx.get(p.url("outbound", "/status/404")).status_code == 404
    text = p.metrics()
    assert 'status_code="503",classification="failure"} 1' in text
    assert 'status_code="404",classification="success"} 1' in text
