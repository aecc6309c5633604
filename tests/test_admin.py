"""The admin API, and metrics that Prometheus' own linter accepts."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from conftest import metric, one_service, require_tool
from meshcore import Proxy


@pytest.fixture
def admin_proxy(backend, proxy):
    b = backend("web-1", "zone-b")
    p = proxy(one_service([b.addr], admin=True))
    host, port = p.admin_address
    return p, f"http://{host}:{port}"


def test_live_ready_config_endpoints(admin_proxy):
    p, admin = admin_proxy
    assert httpx.get(f"{admin}/live").status_code == 200
    assert httpx.get(f"{admin}/ready").status_code == 200
    assert httpx.get(f"{admin}/config").json()["services"][0]["name"] == "web"
    assert httpx.get(f"{admin}/endpoints").json()["services"][0]["balancer"] == "peak-ewma"
    httpx.get(p.url("outbound"))
    eps = httpx.get(f"{admin}/endpoints").json()["services"][0]["endpoints"]
    assert eps[0]["zone"] == "zone-a"
    assert eps[0]["requests"] == 1
    assert {"addr", "ewma_ms", "pending", "requests"} <= set(eps[0])


def test_metrics_names_labels_and_buckets(admin_proxy):
    p, admin = admin_proxy
    httpx.get(p.url("outbound", "/a"), headers={"host": "web.local"})
    r = httpx.get(f"{admin}/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    labels = (
        'direction="outbound",authority="web.local",tls="false",dst_service="web",dst_zone="zone-a",'
        'cross_zone="false",route="route-0"'
    )
    assert f"request_total{{{labels}}} 1" in text
    assert f'response_total{{{labels},status_code="200",classification="success"}} 1' in text
    buckets = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("response_latency_ms_bucket")
    ]
    assert buckets == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "10",
        "20",
        "30",
        "40",
        "50",
        "100",
        "200",
        "300",
        "400",
        "500",
        "1000",
        "2000",
        "3000",
        "4000",
        "5000",
        "10000",
        "20000",
        "30000",
        "40000",
        "50000",
        "+Inf",
    ]
    for name in (
        "tcp_open_total",
        "tcp_close_total",
        "tcp_open_connections",
        "tcp_read_bytes_total",
        "tcp_write_bytes_total",
    ):
        assert f"# TYPE {name} " in text


def test_promtool_accepts_metrics(admin_proxy):
    promtool = require_tool("promtool", "prometheus")
    p, admin = admin_proxy
    with httpx.Client() as c:
        c.get(p.url("outbound"))
        c.get(p.url("outbound", "/status/503"))
    text = httpx.get(f"{admin}/metrics").text
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    # Exit 1 would be a parse error. The one lint finding allowed is promtool's
    # style rule against "_ms" in a name: response_latency_ms is Linkerd's name,
    # and dashboards depend on it, so it is kept on purpose.
    allowed = "response_latency_ms metric names should not contain abbreviated units"
    assert lint.returncode in (0, 3), findings
    assert [f for f in findings if f != allowed] == [], findings


def test_shutdown_from_loopback_stops_the_proxy(admin_proxy):
    p, admin = admin_proxy
    assert httpx.post(f"{admin}/shutdown").status_code == 202
    assert p.wait(5)
    assert not p.running


def test_admin_binds_an_ipv6_address(backend, proxy):
    # "[::1]:0" must give an IPv6 socket, not fail or fall back to IPv4.
    cfg = one_service([backend().addr])
    cfg["admin"] = "[::1]:0"
    p = proxy(cfg)
    host, port = p.admin_address
    assert host == "::1"
    assert httpx.get(f"http://[::1]:{port}/ready").status_code == 200


def test_dual_stack_admin_accepts_changes_from_ipv4_loopback(backend, proxy):
    # On "[::]" an IPv4 caller shows up as ::ffff:127.0.0.1, which is still loopback.
    cfg = one_service([backend().addr])
    cfg["admin"] = "[::]:0"
    p = proxy(cfg)
    _host, port = p.admin_address
    assert httpx.post(f"http://127.0.0.1:{port}/shutdown").status_code == 202
    assert p.wait(5)


class _UnknownService:
    def on_request(self, req):
        if req.path == "/nowhere":
            req.service = "no-such-service"


def test_every_answer_is_one_request_and_one_response(backend, proxy):
    # Answers the proxy makes itself (no route, a plugin's bad choice, no endpoints) count
    # in request_total exactly like proxied ones, once each.
    cfg = one_service([backend().addr], route={"host": "web.local"})
    cfg["services"].append({"name": "empty", "protocol": "http1", "endpoints": []})
    cfg["routes"].append({"listener": "outbound", "host": "empty.local", "backends": [{"service": "empty"}]})
    p = Proxy(cfg)
    p.add_plugin(_UnknownService())
    p.start()
    try:
        statuses = [
            httpx.get(p.url("outbound", path), headers={"host": host}).status_code
            for host, path in [
                ("web.local", "/"),
                ("other.local", "/"),
                ("web.local", "/nowhere"),
                ("empty.local", "/"),
            ]
        ]
        assert statuses == [200, 404, 500, 503]
        text = p.metrics()
        assert metric(text, "request_total") == 4
        assert metric(text, "response_total") == 4
    finally:
        p.stop(grace=0.5)
