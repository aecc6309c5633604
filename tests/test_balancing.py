"""Traffic split and load balancing, observed at real backends."""

from __future__ import annotations

import httpx

from conftest import one_service


def test_weighted_split_90_10(backend, proxy):
    stable, canary = backend("stable"), backend("canary")
    cfg = {
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [
            {
                "listener": "out",
                "backends": [{"service": "stable", "weight": 90}, {"service": "canary", "weight": 10}],
            }
        ],
        "services": [
            {"name": "stable", "protocol": "http1", "endpoints": [{"addr": stable.addr}]},
            {"name": "canary", "protocol": "http1", "endpoints": [{"addr": canary.addr}]},
        ],
    }
    p = proxy(cfg)
    n = 2000
    with httpx.Client() as c:
        names = [c.get(p.url("out")).headers["x-backend"] for _ in range(n)]
    share = names.count("canary")
    # Binomial(2000, 0.1): mean 200, sd 13.4; +-5 sd never fails by chance.
    assert 133 <= share <= 267, share
    assert names.count("stable") == n - share


def test_zero_weight_backend_gets_nothing(backend, proxy):
    a, b = backend("a"), backend("b")
    cfg = {
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [
            {"listener": "out", "backends": [{"service": "a", "weight": 1}, {"service": "b", "weight": 0}]}
        ],
        "services": [
            {"name": "a", "protocol": "http1", "endpoints": [{"addr": a.addr}]},
            {"name": "b", "protocol": "http1", "endpoints": [{"addr": b.addr}]},
        ],
    }
    p = proxy(cfg)
    with httpx.Client() as c:
        for _ in range(100):
            c.get(p.url("out"))
    assert b.requests == 0


def test_peak_ewma_avoids_a_slow_endpoint(backend, proxy):
    fast1, fast2, slow = backend("fast1"), backend("fast2"), backend("slow")
    slow.set_delay(0.15)
    p = proxy(one_service([fast1.addr, fast2.addr, slow.addr]))
    with httpx.Client() as c:
        for _ in range(150):
            assert c.get(p.url("outbound")).status_code == 200
    assert slow.requests < 150 * 0.15, (fast1.requests, fast2.requests, slow.requests)
    eps = {e["addr"]: e for e in p.endpoints()["services"][0]["endpoints"]}
    assert eps[slow.addr]["ewma_ms"] > eps[fast1.addr]["ewma_ms"]


def test_round_robin_spreads_evenly(backend, proxy):
    bs = [backend(f"b{i}") for i in range(3)]
    p = proxy(one_service([b.addr for b in bs], balancer="round-robin"))
    with httpx.Client() as c:
        for _ in range(90):
            c.get(p.url("outbound"))
    assert [b.requests for b in bs] == [30, 30, 30]
