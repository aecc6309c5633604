"""Retries, the retry budget, timeouts and failure accrual, with real failing backends."""

from __future__ import annotations

import time

import httpx

from conftest import metric, one_service


def test_retry_goes_to_another_endpoint(backend, proxy):
    bad, good = backend("bad"), backend("good")
    bad.set_failing(503)
    cfg = one_service(
        [bad.addr, good.addr], balancer="round-robin", route={"retry": {"on": ["gateway-error"], "limit": 1}}
    )
    cfg["services"][0]["breaker"] = False
    p = proxy(cfg)
    with httpx.Client() as c:
        results = [c.get(p.url("outbound")) for _ in range(20)]
    assert all(r.status_code == 200 and r.headers["x-backend"] == "good" for r in results)
    assert bad.requests == 10  # every other first attempt, each retried on `good`
    assert metric(p.metrics(), "retry_total") == 10


def test_retry_budget_caps_retries(backend, proxy):
    a, b = backend("a"), backend("b")
    a.set_failing(500)
    b.set_failing(500)
    cfg = one_service(
        [a.addr, b.addr],
        route={"retry": {"on": ["5xx"], "limit": 1, "budget": 0.2, "min_per_second": 1, "ttl": "10s"}},
    )
    cfg["services"][0]["breaker"] = False
    p = proxy(cfg)
    n = 200
    with httpx.Client() as c:
        codes = [c.get(p.url("outbound")).status_code for _ in range(n)]
    assert codes == [500] * n
    retries = a.requests + b.requests - n
    # 20% of 200 requests plus a reserve of 1/s over the 10 s window.
    assert 40 <= retries <= 0.2 * n + 10, retries
    text = p.metrics()
    assert metric(text, "retry_total") == retries
    assert metric(text, "retry_budget_exhausted_total") == n - retries


def test_large_bodies_are_not_retried(backend, proxy):
    bad = backend("bad")
    bad.set_failing(503)
    cfg = one_service([bad.addr], route={"retry": {"on": ["5xx"], "limit": 1}})
    cfg["services"][0]["breaker"] = False
    p = proxy(cfg)
    assert httpx.post(p.url("outbound", "/count"), content=b"x" * 1000).status_code == 503
    assert bad.requests == 2  # small body: replayed once
    assert httpx.post(p.url("outbound", "/count"), content=b"x" * 100_000).status_code == 503
    assert bad.requests == 3  # over 64 KiB: sent once, not retried


def test_retried_body_arrives_intact(backend, proxy):
    bad, good = backend("bad"), backend("good")
    bad.set_failing(503)
    cfg = one_service([bad.addr, good.addr], balancer="round-robin", route={"retry": {"on": ["5xx"]}})
    cfg["services"][0]["breaker"] = False
    p = proxy(cfg)
    body = bytes(range(256)) * 200  # 51 KiB, under the replay limit
    with httpx.Client() as c:
        for _ in range(4):
            r = c.post(p.url("outbound", "/echo"), content=body)
            assert r.status_code == 200 and r.content == body


def test_response_timeout_is_504_and_not_retried(backend, proxy):
    slow = backend("slow")
    p = proxy(
        one_service(
            [slow.addr],
            route={
                "response_timeout": "200ms",
                "retry": {"on": ["5xx", "gateway-error", "reset"], "limit": 2},
            },
        )
    )
    started = time.monotonic()
    r = httpx.get(p.url("outbound", "/delay/2000"), timeout=10)
    assert r.status_code == 504
    assert r.headers["meshcore-error"] == "upstream timeout"
    assert time.monotonic() - started < 1.5
    assert slow.requests == 1


def test_whole_request_timeout_covers_the_body(backend, proxy):
    p = proxy(one_service([backend().addr], route={"timeout": "500ms"}))
    # Headers in time but no answer at all: 504.
    assert httpx.get(p.url("outbound", "/delay/1000"), timeout=10).status_code == 504
    # Headers at once, then a body dripping for 2 s: cut off at the deadline.
    started = time.monotonic()
    with httpx.stream("GET", p.url("outbound", "/drip/20/100"), timeout=10) as r:
        assert r.status_code == 200
        try:
            b"".join(r.iter_raw())
            completed = True
        except httpx.HTTPError:
            completed = False
    assert not completed
    assert time.monotonic() - started < 1.5
    # A short drip finishes within the deadline.
    assert httpx.get(p.url("outbound", "/drip/3/50"), timeout=10).text == "drop 0\ndrop 1\ndrop 2\n"


def test_breaker_trips_then_probes_once_per_penalty(backend, proxy):
    bad, good = backend("bad"), backend("good")
    bad.set_failing(500)
    cfg = one_service([bad.addr, good.addr], balancer="round-robin")
    cfg["services"][0]["breaker"] = {
        "consecutive_failures": 3,
        "min_penalty": "1s",
        "max_penalty": "1s",
        "jitter": 0,
    }
    p = proxy(cfg)
    with httpx.Client() as c:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            c.get(p.url("outbound"))
            time.sleep(0.01)
    # Three failures trip it; then one probe after each 1 s penalty (about two in 2.5 s).
    assert 4 <= bad.requests <= 6, bad.requests
    assert good.requests > 50
    eps = {e["addr"]: e for e in p.endpoints()["services"][0]["endpoints"]}
    assert eps[bad.addr]["trips"] >= 2
    assert eps[bad.addr]["state"] == "tripped"


def test_all_tripped_fails_fast_with_503(backend, proxy):
    bad = backend("bad")
    bad.set_failing(500)
    cfg = one_service([bad.addr])
    # A lone endpoint is ejected only when the cap allows all, and without panic.
    cfg["services"][0]["breaker"] = {
        "consecutive_failures": 2,
        "min_penalty": "10s",
        "jitter": 0,
        "max_ejection_percent": 100,
        "panic_threshold_percent": 0,
    }
    p = proxy(cfg)
    with httpx.Client() as c:
        assert [c.get(p.url("outbound")).status_code for _ in range(2)] == [500, 500]
        r = c.get(p.url("outbound"))
    assert r.status_code == 503
    assert r.headers["meshcore-error"] == "all endpoints unavailable"
    assert bad.requests == 2
    assert 'balancer_endpoints{dst_service="web",state="tripped"} 1' in p.metrics()
