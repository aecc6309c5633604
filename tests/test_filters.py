"""Declarative route filters, evaluated in Rust: headers, rewrite, redirect, direct response, rate limit."""

from __future__ import annotations

import time

import httpx

from conftest import one_service


def test_request_and_response_header_edits(backend, proxy):
    p = proxy(
        one_service(
            [backend().addr],
            route={
                "request_headers": {
                    "add": {"x-added": "1"},
                    "set": {"x-env": "prod"},
                    "remove": ["x-secret"],
                },
                "response_headers": {"set": {"x-served-by": "meshcore"}, "remove": ["x-zone"]},
            },
        )
    )
    r = httpx.get(p.url("outbound", "/headers"), headers={"x-env": "dev", "x-secret": "s", "x-added": "0"})
    seen = r.json()
    assert seen["x-env"] == "prod"
    assert "x-secret" not in seen
    assert seen["x-added"] == "0, 1"  # added, not replaced
    assert r.headers["x-served-by"] == "meshcore"
    assert "x-zone" not in r.headers


def test_path_prefix_rewrite(backend, proxy):
    p = proxy(one_service([backend().addr], route={"path_prefix": "/api", "rewrite": {"path_prefix": "/v2"}}))
    assert httpx.get(p.url("outbound", "/api/users?id=7")).text.endswith("path=/v2/users\n")
    assert httpx.get(p.url("outbound", "/api")).text.endswith("path=/v2\n")


def test_redirect(proxy):
    cfg = one_service([], route={"redirect": {"scheme": "https", "status": 301}})
    cfg["routes"][0]["backends"] = []
    p = proxy(cfg)
    r = httpx.get(p.url("outbound", "/login?next=/"), headers={"host": "web.local"})
    assert r.status_code == 301
    assert r.headers["location"] == "https://web.local/login?next=/"


def test_direct_response(proxy):
    cfg = one_service(
        [],
        route={
            "direct_response": {
                "status": 418,
                "body": "short and stout\n",
                "headers": {"content-type": "text/plain"},
            }
        },
    )
    cfg["routes"][0]["backends"] = []
    p = proxy(cfg)
    r = httpx.get(p.url("outbound"))
    assert (r.status_code, r.text, r.headers["content-type"]) == (418, "short and stout\n", "text/plain")


def test_rate_limit_returns_429_with_retry_after(backend, proxy):
    b = backend()
    p = proxy(one_service([b.addr], route={"rate_limit": {"rps": 2, "burst": 5}}))
    with httpx.Client() as c:
        codes = [c.get(p.url("outbound")) for _ in range(8)]
    assert [r.status_code for r in codes[:5]] == [200] * 5
    limited = [r for r in codes[5:] if r.status_code == 429]
    assert len(limited) >= 2
    assert limited[0].headers["retry-after"] == "1"
    assert limited[0].headers["meshcore-error"] == "rate limited"
    assert b.requests <= 6
    time.sleep(0.6)  # refills at 2/s
    assert httpx.get(p.url("outbound")).status_code == 200
