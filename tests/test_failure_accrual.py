"""Failure accrual as an operator expects it: the breaker ejects on consecutive
failures but never more than `max_ejection_percent` of a service's endpoints;
below `panic_threshold_percent` available the balancer uses them all; and a
refused connection makes an endpoint costly at once."""

from __future__ import annotations

import httpx

from conftest import closed_port, metric, one_service, wait_until


def service_config(addrs: list[str], breaker: dict | None = None, admin: bool = False) -> dict:
    cfg = one_service(addrs, admin=admin)
    if breaker is not None:
        cfg["services"][0]["breaker"] = breaker
    return cfg


def test_a_lone_flaky_endpoint_is_never_cut_off(proxy, backend):
    # Ten failures in a row, past the default 7: the breaker used to eject the
    # only endpoint, and the requests after were 503 though it had recovered.
    b = backend()
    p = proxy(service_config([b.addr]))
    with httpx.Client() as c:
        b.set_failing(500)
        failing = [c.get(p.url("outbound", f"/{i}")).status_code for i in range(10)]
        b.set_failing(None)
        recovered = [c.get(p.url("outbound", f"/{i}")).status_code for i in range(10)]
    assert failing == [500] * 10
    assert recovered == [200] * 10
    assert b.requests == 20


def test_no_more_than_half_of_a_services_endpoints_are_ejected(proxy, backend):
    a, b = backend("a"), backend("b")
    a.set_failing(500)
    b.set_failing(500)
    p = proxy(service_config([a.addr, b.addr], {"consecutive_failures": 1, "min_penalty": "60s"}))
    with httpx.Client() as c:
        answers = [c.get(p.url("outbound", f"/{i}")) for i in range(20)]
    # Every request reached an endpoint: none is the proxy's "all endpoints unavailable".
    assert [r.status_code for r in answers] == [500] * 20
    assert all(r.text == "failing on purpose\n" for r in answers)
    states = sorted(e["state"] for e in p.endpoints()["services"][0]["endpoints"])
    assert states == ["active", "tripped"]


def test_below_the_panic_threshold_every_endpoint_is_used(proxy, backend):
    ends = [backend(str(i)) for i in range(4)]
    for e in ends[:3]:
        e.set_failing(500)
    breaker = {
        "consecutive_failures": 1,
        "min_penalty": "60s",
        "max_ejection_percent": 100,
        "panic_threshold_percent": 50,
    }
    p = proxy(service_config([e.addr for e in ends], breaker))
    with httpx.Client() as c:

        def three_tripped() -> bool:
            c.get(p.url("outbound", "/"))
            eps = p.endpoints()["services"][0]["endpoints"]
            return [e["state"] for e in eps].count("tripped") == 3

        wait_until(three_tripped, what="three failing endpoints to be ejected")
        assert p.endpoints()["services"][0]["panic"] is True
        assert metric(p.metrics(), "balancer_panic") == 1
        before = [e.requests for e in ends[:3]]
        statuses = [c.get(p.url("outbound", f"/{i}")).status_code for i in range(60)]
    # In panic the ejected endpoints are balanced over again (peak-EWMA may
    # still pass over the costliest one, so their sum is what is asserted).
    assert 503 not in statuses
    assert sum(e.requests for e in ends[:3]) > sum(before)
    assert statuses.count(500) > 0


def test_no_panic_while_enough_endpoints_are_available(proxy, backend):
    ends = [backend(str(i)) for i in range(4)]
    ends[0].set_failing(500)
    p = proxy(service_config([e.addr for e in ends], {"consecutive_failures": 1, "min_penalty": "60s"}))
    with httpx.Client() as c:

        def one_tripped() -> bool:
            c.get(p.url("outbound", "/"))
            return "tripped" in [e["state"] for e in p.endpoints()["services"][0]["endpoints"]]

        wait_until(one_tripped, what="the failing endpoint to be ejected")
    assert p.endpoints()["services"][0]["panic"] is False
    assert metric(p.metrics(), "balancer_panic") == 0


def test_a_refused_connection_turns_the_balancer_away_at_once(proxy, backend):
    # The live endpoint answers in 100 ms; the dead one's untested estimate is
    # lower, so peak-EWMA kept choosing it until the breaker tripped after 7
    # refusals. A refusal now costs the endpoint a second's round trip.
    live = backend("live")
    dead = f"127.0.0.1:{closed_port()}"
    p = proxy(service_config([live.addr, dead]))
    with httpx.Client() as c:
        statuses = [c.get(p.url("outbound", "/delay/100")).status_code for _ in range(10)]
    assert statuses.count(502) <= 1, statuses
    assert statuses.count(200) >= 9
