"""Cost-aware zonal balancing with real backends in three zones (one in another cluster)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from conftest import wait_until
from meshcore.backend import Backend


@pytest.fixture
def mesh(backend, proxy):
    """Proxy in east/zone-a; two backends each in zone-a, zone-b and west/zone-c."""
    zones = {"zone-a": None, "zone-b": None, "zone-c": "west"}
    backends = {z: [backend(f"{z}-{i}", z) for i in (1, 2)] for z in zones}

    def make(**service):
        cfg = {
            "zone": "zone-a",
            "cluster": "east",
            "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
            "routes": [{"listener": "out", "backends": [{"service": "web"}], **service.pop("route", {})}],
            "services": [
                {
                    "name": "web",
                    "balancer": "zonal",
                    "protocol": "http1",
                    "zonal": {"dwell": "200ms"},
                    "endpoints": [
                        {"addr": b.addr, "zone": z, **({"cluster": zones[z]} if zones[z] else {})}
                        for z, group in backends.items()
                        for b in group
                    ],
                    **service,
                }
            ],
        }
        return proxy(cfg)

    return make, backends


def sequential(p, n: int) -> Counter:
    """Zones that answered n requests in a row; every request must succeed."""
    zones: Counter = Counter()
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            r = c.get(p.url("out"))
            assert r.status_code == 200, r.text
            zones[r.headers["x-zone"]] += 1
    return zones


def concurrent_load(p, workers: int, seconds: float) -> Counter:
    zones: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < deadline:
                r = c.get(p.url("out"))
                assert r.status_code == 200
                with lock:
                    zones[r.headers["x-zone"]] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return zones


def test_light_load_stays_local(mesh):
    make, _ = mesh
    p = make()
    zones = sequential(p, 300)
    assert zones["zone-a"] / 300 >= 0.98, zones
    metrics = p.metrics()
    assert 'balancer_active_tiers{dst_service="web"} 1' in metrics
    assert 'balancer_endpoints{dst_service="web",state="active"} 2' in metrics
    assert 'balancer_endpoints{dst_service="web",state="standby"} 4' in metrics
    assert 'dst_zone="zone-a",cross_zone="false"' in metrics


def test_burst_spills_to_next_zone_only_then_returns(mesh):
    make, backends = mesh
    p = make()
    for b in backends["zone-a"]:
        b.set_delay(0.1)
    # Six in flight on two local endpoints is a load of 3 (> 2.0): add zone-b.
    # With four endpoints the load is 1.5, inside the band, so the other cluster stays unused.
    burst = concurrent_load(p, workers=6, seconds=3)
    assert burst["zone-b"] > 0.3 * sum(burst.values()), burst
    assert burst["zone-c"] == 0, burst
    tiers = {e["zone"]: e["tier"] for e in p.endpoints()["services"][0]["endpoints"]}
    assert tiers == {"zone-a": 0, "zone-b": 1, "zone-c": 2}

    for b in backends["zone-a"]:
        b.set_delay(0)
    # Light load again: after a dwell period, back to the local tier alone.
    wait_until(
        lambda: sequential(p, 1) and 'balancer_active_tiers{dst_service="web"} 1' in p.metrics(),
        what="the balancer to drop back to one tier",
    )
    after = sequential(p, 100)
    assert after["zone-a"] >= 95, after
    assert 'balancer_active_tiers{dst_service="web"} 1' in p.metrics()


def test_losing_every_local_backend_loses_no_request(mesh):
    make, backends = mesh
    p = make(
        route={"retry": {"on": ["connect-failure", "reset", "gateway-error"], "limit": 2}},
        breaker={"consecutive_failures": 3, "min_penalty": "300ms", "max_penalty": "600ms", "jitter": 0},
    )
    assert sequential(p, 20)["zone-a"] == 20
    ports = [b.port for b in backends["zone-a"]]
    for b in backends["zone-a"]:
        b.stop()
    during = sequential(p, 100)
    assert during["zone-a"] == 0 and during["zone-b"] == 100, during
    states = [e["state"] for e in p.endpoints()["services"][0]["endpoints"] if e["zone"] == "zone-a"]
    assert states == ["tripped"] * len(ports)

    revived = [Backend(f"zone-a-{i}", "zone-a", port=port) for i, port in enumerate(ports, 1)]

    def local_states() -> list[str]:
        return [e["state"] for e in p.endpoints()["services"][0]["endpoints"] if e["zone"] == "zone-a"]

    try:
        # Past their penalties, requests probe the revived endpoints and close the breakers.
        wait_until(
            lambda: sequential(p, 1) and "tripped" not in local_states(),
            what="probes to close the local breakers",
        )
        back = sequential(p, 50)
        assert back["zone-a"] >= 45, back
    finally:
        for b in revived:
            b.stop()
