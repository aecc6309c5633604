"""Endpoints that come from discovery (#18): a service the config lists without endpoints takes
them from `Proxy.update_endpoints`, under load without a failed request; endpoints that stay
keep their state, and a reload of the config keeps what was discovered."""

from __future__ import annotations

import copy

import httpx
import pytest

from conftest import one_service, wait_until
from meshcore import ConfigError, Proxy
from meshcore.config import load


def discovered_service(**extra) -> dict:
    cfg = one_service([])
    cfg.update(extra)
    return cfg


def endpoint(p, addr: str) -> dict:
    return next(e for e in p.endpoints()["services"][0]["endpoints"] if e["addr"] == addr)


def test_a_service_without_endpoints_takes_the_discovered_ones(proxy, backend):
    a, b = backend("a"), backend("b")
    p = proxy(discovered_service())
    assert httpx.get(p.url("outbound")).status_code == 503, "nothing discovered yet"
    p.update_endpoints("web", [{"addr": a.addr, "zone": "zone-a"}])
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "a"
    served_by_a = endpoint(p, a.addr)["requests"]
    p.update_endpoints("web", [{"addr": a.addr, "zone": "zone-a"}, {"addr": b.addr, "zone": "zone-a"}])
    assert endpoint(p, a.addr)["requests"] == served_by_a, "an endpoint that stays keeps its state"
    assert p.discovered_endpoints()["web"][1]["addr"] == b.addr
    p.update_endpoints("web", None)
    assert httpx.get(p.url("outbound")).status_code == 503, "no endpoints now"


def test_endpoints_set_before_start_are_served_from_the_start(backend):
    a = backend("a")
    p = Proxy(discovered_service())
    p.update_endpoints("web", [{"addr": a.addr}])
    with p:
        assert httpx.get(p.url("outbound")).headers["x-backend"] == "a"


def test_a_reload_keeps_the_discovered_endpoints(proxy, backend):
    a = backend("a")
    cfg = discovered_service()
    p = proxy(cfg)
    p.update_endpoints("web", [{"addr": a.addr}])
    changed = copy.deepcopy(cfg)
    changed["routes"][0]["request_headers"] = {"set": {"x-version": "2"}}
    p.reload(changed)
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "a"


@pytest.mark.parametrize(
    "service, endpoints, message",
    [
        ("nope", [], r"unknown service .nope. \(valid: web, static\)"),
        ("static", [], "service 'static' lists its own endpoints in the config"),
        ("web", [{"addr": "not an address"}], r"web: endpoints\[0\]"),
        ("web", [{"addr": "127.0.0.1:1", "identity": "spiffe://x/y"}], "mTLS needs an \\[identity\\]"),
    ],
)
def test_bad_updates_are_refused_and_change_nothing(proxy, backend, service, endpoints, message):
    a = backend("a")
    cfg = discovered_service()
    cfg["services"].append({"name": "static", "endpoints": [{"addr": a.addr}]})
    p = proxy(cfg)
    p.update_endpoints("web", [{"addr": a.addr}])
    with pytest.raises(ConfigError, match=message):
        p.update_endpoints(service, endpoints)
    assert p.discovered_endpoints() == {
        "web": [{"addr": a.addr, "zone": None, "cluster": None, "identity": None}]
    }
    assert httpx.get(p.url("outbound")).status_code == 200


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_endpoints_moved_under_load_lose_no_request(proxy, backend, http2):
    from meshcore import bench

    backends = [backend(f"b{i}") for i in range(3)]
    p = proxy(discovered_service())
    p.update_endpoints("web", [{"addr": backends[0].addr, "zone": "zone-a"}])
    load = bench.start(p.url("outbound"), rate=400, duration=60, connections=4, http2=http2, streams=2)
    try:
        for step in range(12):  # add, move between zones, drain away, come back
            wanted = [backends[(step + k) % 3] for k in range(1 + step % 2)]
            zone = "zone-a" if step % 3 else "zone-b"
            p.update_endpoints("web", [{"addr": b.addr, "zone": zone} for b in wanted])
            done = load.progress()[1]
            wait_until(lambda done=done: load.progress()[1] >= done + 20, what=f"load after update {step}")
    finally:
        load.stop()
    result = load.wait()
    assert result.errors == {}, result.errors
    assert set(result.statuses) == {200}, result.statuses
    assert sum(b.requests for b in backends) == result.requests


def test_discovery_config_is_checked():
    base = one_service([])
    ok = load({**base, "discovery": {"control": "http://127.0.0.1:7000"}})
    assert ok.discovery is not None and ok.discovery.control == "http://127.0.0.1:7000"
    with pytest.raises(ConfigError, match="plain http:// is for a control plane on loopback only"):
        load({**base, "discovery": {"control": "http://10.0.0.1:7000"}})
    with pytest.raises(ConfigError, match="give the port"):
        load({**base, "discovery": {"control": "http://127.0.0.1"}})
    with pytest.raises(ConfigError, match=r"discovery.control: an https:// control plane takes"):
        load({**base, "discovery": {"control": "https://control.mesh:7000"}})
    # Python only: the core never sees it.
    assert "discovery" not in ok.to_core()
