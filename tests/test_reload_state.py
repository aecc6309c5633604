"""A reload keeps what the proxy learned about endpoints that stay: their EWMA, breaker and
request counts, their pooled upstream connections, and their metrics; an added endpoint
starts fresh and a removed one is gone."""

from __future__ import annotations

import copy
import time

import httpx

from conftest import metric, one_service

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def endpoint(p, addr: str) -> dict:
    service = next(s for s in p.endpoints()["services"] if s["name"] == "web")
    return next(e for e in service["endpoints"] if e["addr"] == addr)


def slow_first(_head: bytes, conn: int, n: int) -> bytes:
    if (conn, n) == (1, 1):
        time.sleep(0.2)  # one slow answer: the EWMA jumps to it, far from the 30 ms a new endpoint gets
    return OK


def test_endpoints_that_stay_keep_their_state_pool_and_metrics(proxy, upstream, backend):
    steady = upstream(slow_first)
    flaky = backend("flaky")
    flaky.set_failing(500)
    cfg = one_service([steady.addr, flaky.addr])
    cfg["services"][0]["breaker"] = {"consecutive_failures": 1, "min_penalty": "60s"}
    p = proxy(cfg)
    with httpx.Client() as c:
        statuses = [c.get(p.url("outbound", f"/{i}")).status_code for i in range(20)]
    assert 500 in statuses, "the flaky endpoint was tried and tripped"
    before_steady, before_flaky = endpoint(p, steady.addr), endpoint(p, flaky.addr)
    assert before_steady["ewma_ms"] > 100
    assert before_flaky["trips"] >= 1 and before_flaky["state"] != "ready"
    responses_before = metric(p.metrics(), "response_total")
    connections_before = steady.connections

    changed = copy.deepcopy(cfg)
    changed["routes"][0]["request_headers"] = {"set": {"x-version": "2"}}
    p.reload(changed)

    after_steady, after_flaky = endpoint(p, steady.addr), endpoint(p, flaky.addr)
    assert after_steady["requests"] == before_steady["requests"] and after_steady["requests"] > 0
    assert after_steady["ewma_ms"] > 100, "the EWMA went on decaying from its value, not from 30 ms"
    assert (after_flaky["trips"], after_flaky["state"]) == (before_flaky["trips"], before_flaky["state"])
    with httpx.Client() as c:
        for i in range(10):
            c.get(p.url("outbound", f"/again/{i}"))
    # The flaky endpoint is still tripped, so these went to the steady one, on the connection
    # pooled before the reload: no new one was opened to it.
    assert steady.connections == connections_before
    assert any(b"x-version: 2" in h.lower() for h in steady.heads), "the new route config applies"
    assert metric(p.metrics(), "response_total") >= responses_before + 10

    # The flaky endpoint goes, another comes: it starts fresh, the one that stays keeps its count.
    added = backend("added")
    swapped = copy.deepcopy(changed)
    swapped["services"][0]["endpoints"] = [{"addr": a, "zone": "zone-a"} for a in (steady.addr, added.addr)]
    steady_requests = endpoint(p, steady.addr)["requests"]
    p.reload(swapped)
    addrs = {e["addr"] for e in p.endpoints()["services"][0]["endpoints"]}
    assert addrs == {steady.addr, added.addr}
    assert endpoint(p, added.addr)["requests"] == 0
    assert endpoint(p, steady.addr)["requests"] == steady_requests
