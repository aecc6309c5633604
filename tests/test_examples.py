"""Every example runs: the scripted proxy, and each example plugin through a real proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import one_service, wait_until
from meshcore import Proxy
from meshcore.testing import PluginTester

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def with_plugin(backend_addr: str, plugin: str) -> dict:
    cfg = one_service([backend_addr], admin=True)
    cfg["plugins"] = [{"path": str(EXAMPLES / "plugins" / plugin)}]
    return cfg


def test_scripted_proxy():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "scripted_proxy.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "no cookie -> stable, canary=1 -> canary" in out.stdout


def test_bearer_auth(backend):
    with Proxy(with_plugin(backend().addr, "bearer_auth.py")) as p:
        assert httpx.get(p.url("outbound")).status_code == 401
        assert httpx.get(p.url("outbound"), headers={"authorization": "Bearer wrong"}).status_code == 401
        seen = httpx.get(
            p.url("outbound", "/headers"), headers={"authorization": "Bearer t0ken-alice"}
        ).json()
    assert seen["x-user"] == "alice" and "authorization" not in seen


def test_inject_headers(backend):
    with Proxy(with_plugin(backend("b", "zone-b").addr, "inject_headers.py")) as p:
        r = httpx.get(p.url("outbound", "/headers"), headers={"x-request-id": "abc"})
    assert r.json()["x-request-id"] == "abc" and r.json()["x-upstream-zone"] == "zone-a"
    assert r.headers["x-request-id"] == "abc" and r.headers["x-served-by"] == "meshcore"


def test_json_access_log(backend, tmp_path, monkeypatch):
    log = tmp_path / "access.log"
    monkeypatch.setenv("MESHCORE_ACCESS_LOG", str(log))
    with Proxy(with_plugin(backend().addr, "json_access_log.py")) as p:
        hello = httpx.get(p.url("outbound", "/hello"))
        httpx.get(p.url("outbound", "/status/503"))
        wait_until(lambda: len(log.read_text().splitlines()) == 2, what="a log line for each request")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["path"], x["status"]) for x in lines] == [("/hello", 200), ("/status/503", 503)]
    assert lines[0]["service"] == "web" and lines[0]["zone"] == "zone-a"
    assert lines[0]["response_bytes"] == len(hello.content) == len(b"hello from b (zone-a) path=/hello\n")


def test_custom_metric(backend):
    with Proxy(with_plugin(backend().addr, "custom_metric.py")) as p:
        for path in ("/a", "/b", "/status/404"):
            httpx.get(p.url("outbound", path))
        host, port = p.admin_address

        def metrics() -> str:
            return httpx.get(f"http://{host}:{port}/metrics").text

        counted = [
            'plugin_responses_by_class_total{method="GET",class="2xx"} 2',
            'plugin_responses_by_class_total{method="GET",class="4xx"} 1',
        ]
        wait_until(lambda: all(c in metrics() for c in counted), what="the plugin to count all three")


def test_testing_kit_runs_hooks_without_sockets():
    with PluginTester(EXAMPLES / "plugins" / "bearer_auth.py") as t:
        denied = t.request("GET", "/", headers={})
        assert denied.short_circuit is not None and denied.short_circuit.status == 401
        ok = t.request("GET", "/", headers={"authorization": "Bearer t0ken-bob"})
        assert ok.short_circuit is None and ok.request.headers["x-user"] == "bob"
    with PluginTester(EXAMPLES / "plugins" / "inject_headers.py") as t:
        ex = t.request(headers={"x-request-id": "r1"})
        assert ex.upstream(zone="zone-b").headers["x-upstream-zone"] == "zone-b"
        resp = ex.respond(200)
        assert resp.headers["x-request-id"] == "r1" and resp.headers["x-served-by"] == "meshcore"
    with PluginTester("examples/plugins/custom_metric.py") as t:
        t.request().log(method="GET", status=500)
        assert 'class="5xx"} 1' in t.host.render_metrics()
