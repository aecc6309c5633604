"""Labels an operator used to Linkerd looks for: the route on request and
response metrics, the gRPC status on responses, and plaintext refused by a
mesh-only listener counted with the other denials."""

from __future__ import annotations

import socket

import httpx

from conftest import closed_unanswered, one_service, wait_until
from mesh_helpers import identity_files, inbound_config, issue, make_ca


def test_responses_carry_their_route(proxy, backend):
    cfg = one_service([backend().addr], route={"name": "api", "path_prefix": "/api"})
    p = proxy(cfg)
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/api/x")).status_code == 200
        assert c.get(p.url("outbound", "/other")).status_code == 404
    text = p.metrics()
    assert 'route="api",status_code="200",classification="success"} 1' in text
    # No route was found for the 404: its route label is empty.
    assert 'route="",status_code="404",classification="success"} 1' in text
    assert 'request_total{direction="outbound",' in text and 'route="api"} 1' in text


def test_plaintext_refused_by_a_mesh_listener_is_a_denial(proxy, backend, tmp_path):
    ca = make_ca(tmp_path / "ca")
    api = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    p = proxy(inbound_config(api, backend().addr))
    host, port = p.addresses["inbound"]
    assert closed_unanswered((host, port), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), "closed without an answer"
    denied = 'inbound_http_authz_deny_total{listener="inbound",rule="tls:mesh"} 1'
    wait_until(lambda: denied in p.metrics(), what="the refusal counted as a denial")


def test_route_stats_give_each_route_its_responses_failures_and_latencies(proxy, backend, upstream):
    failing = upstream(lambda *_: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    cfg = one_service([backend().addr], route={"name": "api", "path_prefix": "/api"})
    cfg["services"].append({"name": "down", "protocol": "http1", "endpoints": [{"addr": failing.addr}]})
    cfg["routes"].insert(0, {"listener": "outbound", "name": "bad", "path_prefix": "/bad",
                             "backends": [{"service": "down"}]})  # fmt: skip
    p = proxy(cfg)
    with httpx.Client() as c:
        for path in ("/api/1", "/api/2", "/bad", "/nowhere"):
            c.get(p.url("outbound", path))
    stats = p.route_stats()
    assert stats["buckets_ms"][:3] == [1, 2, 3]
    routes = stats["routes"]
    assert set(routes) == {"api", "bad"}, "a request that matched no route is left out"
    assert (routes["api"]["responses"], routes["api"]["failures"]) == (2, 0)
    assert (routes["bad"]["responses"], routes["bad"]["failures"]) == (1, 1)
    assert sum(routes["api"]["buckets"]) == 2


def test_lifecycle_events_are_counted_in_metrics(proxy, backend):
    p = proxy(one_service([backend().addr]))
    p.count_lifecycle("reload", "applied")
    p.count_lifecycle("reload", "refused")
    p.count_lifecycle("reload", "applied")
    p.count_lifecycle("rollback", "verify-success-rate")
    text = p.metrics()
    assert 'config_reload_total{result="applied"} 2\n' in text
    assert 'config_reload_total{result="refused"} 1\n' in text
    assert 'config_rollback_total{reason="verify-success-rate"} 1\n' in text


def test_stats_sum_routes_services_and_decisions(proxy, backend, tmp_path):
    """`route_stats()` (the admin's /stats): per route and per service, and the denial above."""
    b = backend()
    cfg = one_service([b.addr], route={"name": "api", "path_prefix": "/api"})
    p = proxy(cfg)
    with httpx.Client() as c:
        for _ in range(3):
            assert c.get(p.url("outbound", "/api/x")).status_code == 200
        assert c.get(p.url("outbound", "/other")).status_code == 404
    stats = p.route_stats()
    assert set(stats["routes"]) == {"api"}, "the 404 matched no route"
    assert set(stats["services"]) == {"web"}
    for row in (stats["routes"]["api"], stats["services"]["web"]):
        assert (row["responses"], row["failures"]) == (3, 0)
        assert sum(row["buckets"]) == 3 and len(row["buckets"]) == len(stats["buckets_ms"])
    assert stats["authorization"] == []

    ca = make_ca(tmp_path / "ca")
    api = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    inbound = proxy(inbound_config(api, b.addr))
    host, port = inbound.addresses["inbound"]
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        wait_until(lambda: inbound.route_stats()["authorization"], what="the denial counted")
    denied = {"listener": "inbound", "rule": "tls:mesh", "decision": "deny", "count": 1}
    assert inbound.route_stats()["authorization"] == [denied]
