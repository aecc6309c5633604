"""Python plugins through real proxies: every phase, short-circuits, async hooks,
failure policies, timeouts, route scoping and hot reload."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
import threading
import types

import httpx
import pytest

from conftest import metric, one_service, wait_until
from meshcore import MeshcoreError, PluginError, Proxy, Response


def two_routes(backend_addr: str, canary_addr: str | None = None) -> dict:
    cfg = one_service([backend_addr], route={"name": "api", "path_prefix": "/api"})
    cfg["routes"].append({"name": "other", "listener": "outbound", "backends": [{"service": "web"}]})
    if canary_addr:
        cfg["services"].append(
            {"name": "canary", "protocol": "http1", "endpoints": [{"addr": canary_addr, "zone": "zone-c"}]}
        )
    return cfg


class EveryPhase:
    def __init__(self):
        self.logs: list[dict] = []

    def on_request(self, req):
        req.ctx["seen"] = req.path
        req.headers["x-added"] = "1"
        req.headers.remove("x-drop")
        if req.path.startswith("/api/old"):
            req.path = "/api/new" + req.path[len("/api/old") :]
        if req.headers.get("x-to") == "canary":
            req.service = "canary"

    def on_upstream_request(self, req, endpoint):
        req.headers["x-endpoint-zone"] = endpoint.zone

    def on_response(self, req, resp):
        resp.headers["x-ctx"] = req.ctx["seen"]
        if resp.status == 404:
            resp.status = 410

    def on_log(self, summary):
        self.logs.append(summary)


def test_every_phase_and_mutation(backend, proxy):
    web, canary = backend("web", "zone-a"), backend("canary", "zone-c")
    plugin = EveryPhase()
    p = Proxy(two_routes(web.addr, canary.addr))
    p.add_plugin(plugin)
    p.start()
    try:
        r = httpx.get(p.url("outbound", "/api/old/x"), headers={"x-drop": "secret"})
        assert r.text.endswith("path=/api/new/x\n")
        assert r.headers["x-ctx"] == "/api/old/x"
        seen = httpx.get(p.url("outbound", "/headers"), headers={"x-drop": "secret"}).json()
        assert seen["x-added"] == "1" and seen["x-endpoint-zone"] == "zone-a" and "x-drop" not in seen
        assert (
            httpx.get(p.url("outbound", "/api/x"), headers={"x-to": "canary"}).headers["x-backend"]
            == "canary"
        )
        assert httpx.get(p.url("outbound", "/status/404")).status_code == 410
        wait_until(lambda: len(plugin.logs) == 4, what="a log summary for each of the four requests")
        # Summaries arrive off the request path, each on a blocking thread: in any order.
        first = next(s for s in plugin.logs if s["ctx"] == {"seen": "/api/old/x"})
        assert first["status"] == 200 and first["route"] == "api" and first["service"] == "web"
        assert first["zone"] == "zone-a" and first["endpoint"] == web.addr
        assert first["response_bytes"] == len(r.content) and first["retried"] is False
        assert first["ctx"] == {"seen": "/api/old/x"} and first["duration_ms"] >= first["ttfb_ms"] > 0
    finally:
        p.stop()


def test_short_circuit_never_reaches_the_backend(backend, proxy):
    b = backend()

    class Deny:
        def on_request(self, req):
            if req.path == "/secret":
                return Response(403, {"x-why": "plugin"}, "no\n")

    p = proxy(one_service([b.addr]))
    p.add_plugin(Deny())
    r = httpx.get(p.url("outbound", "/secret"))
    assert (r.status_code, r.text, r.headers["x-why"]) == (403, "no\n", "plugin")
    assert b.requests == 0
    assert httpx.get(p.url("outbound", "/open")).status_code == 200


def test_async_hooks(backend, proxy):
    class Overlapping:
        """Each request's hook waits until ten are running at once: hooks run
        in series would never get there, and give up after 5 s."""

        def __init__(self) -> None:
            self.running = 0
            self.most = 0
            self.all_in: asyncio.Event | None = None  # made on the plugin loop

        async def on_request(self, req):
            if self.all_in is None:
                self.all_in = asyncio.Event()
            self.running += 1
            self.most = max(self.most, self.running)
            if self.most == 10:
                self.all_in.set()
            try:
                await asyncio.wait_for(self.all_in.wait(), 5)
            except asyncio.TimeoutError:
                pass  # in series: the assertion on `most` below says so
            finally:
                self.running -= 1
            req.headers["x-async"] = "yes"

        async def on_response(self, req, resp):
            await asyncio.sleep(0)  # suspends: an awaiting hook, not a plain function
            resp.headers["x-async-response"] = "yes"

    plugin = Overlapping()
    p = proxy(one_service([backend().addr]))
    p.add_plugin(plugin, timeout=10)
    with httpx.Client(timeout=30) as c:
        results = []

        def call():
            results.append(c.get(p.url("outbound", "/headers")))

        threads = [threading.Thread(target=call) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 10
    assert all(r.json()["x-async"] == "yes" and r.headers["x-async-response"] == "yes" for r in results)
    assert plugin.most == 10  # all ten hooks were awaiting at once


class Broken:
    def on_request(self, req):
        if req.path == "/boom":
            raise RuntimeError("kaboom")
        req.headers["x-ok"] = "1"


def plugin_errors(p) -> float:
    return metric(p.metrics(), "plugin_errors_total")


def test_fail_closed_is_a_500_and_hurts_no_other_request(backend, proxy):
    b = backend()
    p = proxy(one_service([b.addr]))
    p.add_plugin(Broken(), name="broken")
    r = httpx.get(p.url("outbound", "/boom"))
    assert r.status_code == 500 and r.headers["meshcore-error"] == "plugin error"
    assert b.requests == 0
    assert httpx.get(p.url("outbound", "/headers")).json()["x-ok"] == "1"
    assert plugin_errors(p) == 1
    assert 'plugin_duration_seconds_count{plugin="broken",phase="on_request"} 2' in p.metrics()


def test_fail_open_lets_the_request_through(backend, proxy):
    p = proxy(one_service([backend().addr]))
    p.add_plugin(Broken(), on_error="fail-open")
    assert httpx.get(p.url("outbound", "/boom")).status_code == 200
    assert plugin_errors(p) == 1


@pytest.mark.parametrize("policy, status", [("fail-closed", 500), ("fail-open", 200)])
def test_async_timeout_follows_the_policy(backend, proxy, policy, status):
    cancelled = threading.Event()

    class Stuck:
        async def on_request(self, req):
            try:
                await asyncio.sleep(3600)  # never finishes: only the 0.2 s timeout can answer
            except asyncio.CancelledError:
                cancelled.set()
                raise

    b = backend()
    p = proxy(one_service([b.addr]))
    p.add_plugin(Stuck(), on_error=policy, timeout=0.2)
    assert httpx.get(p.url("outbound"), timeout=30).status_code == status
    wait_until(cancelled.is_set, what="the timed-out hook to be cancelled")
    assert plugin_errors(p) == 1
    assert b.requests == (1 if policy == "fail-open" else 0)


def test_route_scoping_keeps_other_routes_out_of_python(backend, proxy):
    calls = []

    class Counter:
        def on_request(self, req):
            calls.append(req.route)

    p = proxy(two_routes(backend().addr))
    p.add_plugin(Counter(), routes=["api"])
    httpx.get(p.url("outbound", "/api/x"))
    httpx.get(p.url("outbound", "/elsewhere"))
    httpx.get(p.url("outbound", "/elsewhere"))
    assert calls == ["api"]


def test_unknown_hook_is_an_error_with_a_suggestion(backend):
    class Typo:
        def on_requets(self, req):
            pass

    p = Proxy(one_service([backend().addr]))
    with pytest.raises(PluginError, match="unknown hook 'on_requets'; did you mean 'on_request'"):
        p.add_plugin(Typo())


PLUGIN_V1 = """
def on_response(req, resp):
    resp.headers["x-version"] = "1"
"""


def test_hot_reload_good_then_broken(tmp_path, backend):
    plugin = tmp_path / "versioned.py"
    plugin.write_text(PLUGIN_V1)
    cfg = one_service([backend().addr], admin=True)
    cfg["plugins"] = [{"path": "versioned.py"}]
    (tmp_path / "mesh.yaml").write_text(json.dumps(cfg))
    with Proxy(tmp_path / "mesh.yaml") as p:
        host, port = p.admin_address
        admin = f"http://{host}:{port}"
        url = p.url("outbound")
        assert httpx.get(url).headers["x-version"] == "1"
        # A good change on disk is picked up by the watcher.
        plugin.write_text(PLUGIN_V1.replace('"1"', '"2"'))
        wait_until(lambda: httpx.get(url).headers.get("x-version") == "2", what="version 2 to be loaded")
        # A broken change keeps version 2 running and says why.
        plugin.write_text("def on_response(req, resp:\n    pass\n")

        def load_error() -> str:
            return httpx.get(f"{admin}/plugins").json()["plugins"][0]["error"] or ""

        wait_until(lambda: "SyntaxError" in load_error(), what="the watcher to try the broken file")
        assert httpx.get(url).headers["x-version"] == "2"
        # Fixed again, and reloaded through the admin API.
        plugin.write_text(PLUGIN_V1.replace('"1"', '"3"'))
        r = httpx.post(f"{admin}/plugins/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is True
        assert httpx.get(url).headers["x-version"] == "3"


def test_rejected_reload_keeps_the_running_plugins(tmp_path, backend, proxy):
    (tmp_path / "versioned.py").write_text(PLUGIN_V1)
    cfg = one_service([backend().addr])
    p = proxy(cfg)
    cfg["plugins"] = [{"path": str(tmp_path / "versioned.py")}]
    with socket.socket() as taken:  # the core refuses a listener it cannot bind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg["listeners"].append({"name": "busy", "bind": f"127.0.0.1:{taken.getsockname()[1]}"})
        with pytest.raises(MeshcoreError, match="cannot bind"):
            p.reload(cfg)
    assert "x-version" not in httpx.get(p.url("outbound")).headers
    assert p.config.plugins == []


def test_config_errors_name_the_plugin(tmp_path, backend):
    cfg = one_service([backend().addr])
    cfg["plugins"] = [{"path": str(tmp_path / "missing.py")}]
    with pytest.raises(PluginError, match="no such plugin file"):
        Proxy(cfg)
    cfg["plugins"] = [{"module": "json", "routes": ["nope"]}]
    from meshcore import ConfigError

    with pytest.raises(ConfigError, match=r"plugins\[0\].routes\[0\]: unknown route 'nope'"):
        Proxy(cfg)


def test_proxy_without_plugins_never_loads_a_host(backend, proxy):
    p = proxy(one_service([backend().addr]))
    assert p.plugins() == []
    assert "plugin_" not in p.metrics()


def test_module_plugins_load_by_import_path(tmp_path, backend, monkeypatch):
    (tmp_path / "my_plugins.py").write_text(
        textwrap.dedent("""
        class Stamp:
            def on_response(self, req, resp):
                resp.headers["x-stamp"] = "module"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = one_service([backend().addr])
    cfg["plugins"] = [{"module": "my_plugins:Stamp"}]
    with Proxy(cfg) as p:
        assert httpx.get(p.url("outbound")).headers["x-stamp"] == "module"


GATED_PLUGIN = """
import reload_gate

reload_gate.importing.set()
reload_gate.proceed.wait(10)


def on_response(req, resp):
    resp.headers["x-file"] = "1"
"""


class Stamp:
    def on_response(self, req, resp):
        resp.headers["x-stamp"] = "added"


def test_a_plugin_added_while_plugins_reload_is_kept(tmp_path, backend, proxy, monkeypatch):
    # The file plugin's import waits on `proceed`, so add_plugin runs in the middle of a reload.
    gate = types.ModuleType("reload_gate")
    gate.importing, gate.proceed = threading.Event(), threading.Event()
    gate.proceed.set()
    monkeypatch.setitem(sys.modules, "reload_gate", gate)
    (tmp_path / "gated.py").write_text(GATED_PLUGIN)
    cfg = one_service([backend().addr])
    cfg["plugins"] = [{"path": str(tmp_path / "gated.py")}]
    p = proxy(cfg)
    gate.importing.clear()
    gate.proceed.clear()
    reloading = threading.Thread(target=p.reload_plugins)
    reloading.start()
    try:
        assert gate.importing.wait(10), "the reload never began importing the file"
        p.add_plugin(Stamp(), name="stamp")
    finally:
        gate.proceed.set()
        reloading.join()
    assert [plugin["name"] for plugin in p.plugins()] == ["gated", "stamp"]
    r = httpx.get(p.url("outbound"))
    assert (r.headers.get("x-file"), r.headers.get("x-stamp")) == ("1", "added")


def test_a_plugin_class_that_fails_to_start_is_a_plugin_error(tmp_path, backend):
    (tmp_path / "needs_token.py").write_text(
        textwrap.dedent("""
        class Plugin:
            def __init__(self):
                raise RuntimeError("no token configured")

            def on_request(self, req):
                pass
    """)
    )
    cfg = one_service([backend().addr])
    cfg["plugins"] = [{"path": str(tmp_path / "needs_token.py")}]
    with pytest.raises(
        PluginError, match=r"needs_token.py: failed to load: RuntimeError: no token configured"
    ):
        Proxy(cfg)


def test_a_file_the_plugin_reads_is_not_mistaken_for_the_plugin_file(tmp_path, backend):
    (tmp_path / "reads_rules.py").write_text('RULES = open("/nonexistent/rules.json").read()\n')
    cfg = one_service([backend().addr])
    cfg["plugins"] = [{"path": str(tmp_path / "reads_rules.py")}]
    with pytest.raises(PluginError, match=r"reads_rules.py: failed to load: FileNotFoundError: .*rules.json"):
        Proxy(cfg)
