"""Retries, the retry budget, timeouts and failure accrual, with real failing backends."""

from __future__ import annotations

import threading

import httpx

from conftest import metric, one_service, wait_until


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


def test_response_timeout_is_504_and_not_retried(upstream, proxy):
    # The upstream never answers while the test runs and the route has no other
    # timeout: only the 200 ms response timeout can answer.
    release = threading.Event()

    def never_answer(*_) -> None:
        release.wait(60)  # then closes without an answer

    silent = upstream(never_answer)
    p = proxy(
        one_service(
            [silent.addr],
            route={
                "response_timeout": "200ms",
                "retry": {"on": ["5xx", "gateway-error", "reset"], "limit": 2},
            },
        )
    )
    try:
        r = httpx.get(p.url("outbound", "/never"), timeout=30)
        assert r.status_code == 504
        assert r.headers["meshcore-error"] == "upstream timeout"
        assert len(silent.heads) == 1
    finally:
        release.set()


def test_whole_request_timeout_covers_the_body(backend, proxy):
    p = proxy(one_service([backend().addr], route={"timeout": "500ms"}))
    # Headers in time but no answer at all: 504.
    assert httpx.get(p.url("outbound", "/delay/1000"), timeout=10).status_code == 504
    # Headers at once, then a body dripping for 2 s: cut off at the deadline, part way.
    received = b""
    with httpx.stream("GET", p.url("outbound", "/drip/20/100"), timeout=30) as r:
        assert r.status_code == 200
        try:
            for chunk in r.iter_raw():
                received += chunk
            completed = True
        except httpx.RemoteProtocolError:
            completed = False
    assert not completed
    assert received.startswith(b"drop 0\n") and b"drop 19\n" not in received
    # A body streamed in pieces that ends before the deadline is not cut.
    assert httpx.get(p.url("outbound", "/drip/3/10"), timeout=10).text == "drop 0\ndrop 1\ndrop 2\n"


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
    statuses: list[int] = []

    def bad_endpoint() -> dict:
        return next(e for e in p.endpoints()["services"][0]["endpoints"] if e["addr"] == bad.addr)

    with httpx.Client() as c:

        def sent_until(failures: int):
            """Sends one request per poll until the bad endpoint has seen `failures`."""

            def step() -> bool:
                statuses.append(c.get(p.url("outbound")).status_code)
                return bad.requests >= failures

            return step

        def tripped(times: int):
            return lambda: (bad_endpoint()["state"], bad_endpoint()["trips"]) == ("tripped", times)

        # Three failures in a row trip it.
        wait_until(sent_until(3), what="three failures at the bad endpoint")
        wait_until(tripped(1), what="the third failure to trip the breaker")
        # Then, after each penalty, one request probes it; failing, it trips again.
        for probe in (1, 2):
            wait_until(sent_until(3 + probe), 15, f"probe {probe} after a 1 s penalty")
            wait_until(tripped(1 + probe), what=f"failed probe {probe} to trip the breaker again")
            assert bad.requests == 3 + probe
    # Every other request went to the good endpoint and succeeded.
    assert statuses.count(500) == bad.requests == 5
    assert statuses.count(200) == good.requests == len(statuses) - 5


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
