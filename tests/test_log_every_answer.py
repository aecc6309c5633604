"""`on_log` (and every access log built on it) sees every request that gets an
answer, exactly once: the proxy's own answers (401 from a plugin, 403, 404,
429, a direct response, 502, 503, 504) as well as the upstream's."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from conftest import closed_port, wait_until
from meshcore import Response


class Recorder:
    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.lock = threading.Lock()

    def on_request(self, req):
        req.ctx["asked"] = req.path
        if req.headers.get("x-token") == "bad":
            return Response(401, {}, "who are you?\n")

    def on_log(self, summary):
        with self.lock:
            self.logs.append(summary)


def config(web: str) -> dict:
    dead = f"127.0.0.1:{closed_port()}"
    return {
        "listeners": [
            {"name": "outbound", "bind": "127.0.0.1:0"},
            {"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"},
        ],
        "policy": {"default": "all-authenticated"},
        "routes": [
            {
                "listener": "outbound",
                "name": "slow",
                "headers": {"x-slow": "1"},
                "timeout": "300ms",
                "backends": [{"service": "web"}],
            },
            {"listener": "outbound", "name": "ok", "path_prefix": "/ok", "backends": [{"service": "web"}]},
            {
                "listener": "outbound",
                "name": "dead",
                "path_prefix": "/dead",
                "backends": [{"service": "dead"}],
            },
            {
                "listener": "outbound",
                "name": "limited",
                "path_prefix": "/limited",
                "rate_limit": {"rps": 0.001, "burst": 1},
                "backends": [{"service": "web"}],
            },
            {
                "listener": "outbound",
                "name": "direct",
                "path_prefix": "/direct",
                "direct_response": {"status": 200, "body": "here\n"},
            },
            {
                "listener": "outbound",
                "name": "empty",
                "path_prefix": "/empty",
                "backends": [{"service": "empty"}],
            },
            {"listener": "inbound", "name": "in", "backends": [{"service": "web"}]},
        ],
        "services": [
            {"name": "web", "endpoints": [{"addr": web}]},
            {"name": "dead", "endpoints": [{"addr": dead}], "breaker": False},
            {"name": "empty", "endpoints": []},
        ],
    }


def test_every_answer_is_logged_once(proxy, backend):
    plugin = Recorder()
    p = proxy(config(backend().addr))
    p.add_plugin(plugin)
    out = lambda path: p.url("outbound", path)  # noqa: E731
    with httpx.Client() as c:
        asked = [
            (c.get(out("/ok/x")).status_code, "ok"),
            (c.get(out("/ok/x"), headers={"x-token": "bad"}).status_code, "ok"),
            (c.get(out("/nowhere")).status_code, ""),
            (c.get(out("/limited")).status_code, "limited"),
            (c.get(out("/limited")).status_code, "limited"),
            (c.get(out("/direct")).status_code, "direct"),
            (c.get(out("/dead")).status_code, "dead"),
            (c.get(out("/empty")).status_code, "empty"),
            (c.get(out("/delay/3000"), headers={"x-slow": "1"}).status_code, "slow"),
            # Policy decides once routing has found the route, so a refusal names it.
            (c.get(p.url("inbound", "/in")).status_code, "in"),
        ]
        statuses = [s for s, _ in asked]
        assert statuses == [200, 401, 404, 200, 429, 200, 502, 503, 504, 403]
        wait_until(lambda: len(plugin.logs) >= len(asked), what="a summary for every answer")
        # A last request, logged after the others were: nothing more came meanwhile.
        assert c.get(out("/ok/last")).status_code == 200
        wait_until(lambda: any(s["path"] == "/ok/last" for s in plugin.logs), what="the last summary")
    with plugin.lock:
        logs = [s for s in plugin.logs if s["path"] != "/ok/last"]
    assert Counter((s["status"], s["route"]) for s in logs) == Counter(asked)
    by_status = {s["status"]: s for s in logs}
    assert by_status[401]["ctx"] == {"asked": "/ok/x"}, "a hook's answer keeps its ctx"
    assert by_status[404]["path"] == "/nowhere" and by_status[404]["method"] == "GET"
    assert by_status[502]["service"] == "dead" and by_status[503]["service"] == "empty"
    assert by_status[504]["service"] == "web" and by_status[504]["duration_ms"] >= 300
    assert by_status[429]["ctx"] == {}


def test_a_route_scoped_plugin_logs_only_its_routes_answers(proxy, backend):
    plugin = Recorder()
    p = proxy(config(backend().addr))
    p.add_plugin(plugin, routes=["limited"])
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/nowhere")).status_code == 404
        assert c.get(p.url("outbound", "/direct")).status_code == 200
        assert [c.get(p.url("outbound", "/limited")).status_code for _ in range(2)] == [200, 429]
    wait_until(lambda: len(plugin.logs) >= 2, what="the limited route's summaries")
    assert sorted(s["status"] for s in plugin.logs) == [200, 429]
    assert {s["route"] for s in plugin.logs} == {"limited"}
