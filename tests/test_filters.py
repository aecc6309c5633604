"""Declarative route filters, evaluated in Rust: headers, rewrite, redirect, direct response, rate limit."""

from __future__ import annotations

import httpx

from conftest import one_service, wait_until


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
    # One token per 100 s: none comes back while the test runs, so the count is exact.
    b = backend()
    p = proxy(one_service([b.addr], route={"rate_limit": {"rps": 0.01, "burst": 5}}))
    with httpx.Client() as c:
        answers = [c.get(p.url("outbound")) for _ in range(8)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    limited = answers[5]
    assert limited.headers["meshcore-error"] == "rate limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 100  # whole seconds until the next token
    assert b.requests == 5


def test_rate_limit_refills(backend, proxy):
    b = backend()
    p = proxy(one_service([b.addr], route={"rate_limit": {"rps": 2, "burst": 1}}))
    with httpx.Client() as c:
        codes: list[int] = []

        def answered(code: int):
            def send() -> bool:
                codes.append(c.get(p.url("outbound")).status_code)
                return codes[-1] == code

            return send

        wait_until(answered(429), what="the bucket to run dry")
        wait_until(answered(200), what="a token to come back at 2/s")
    assert set(codes) == {200, 429}
    assert b.requests == codes.count(200)
