"""`Proxy.add_plugin(obj, routes=[...])` refuses a route the config does not have."""

from __future__ import annotations

import httpx
import pytest

from conftest import one_service
from meshcore import ConfigError, Proxy


class Tag:
    def on_response(self, req, resp):
        resp.headers["x-tagged"] = req.route


def config(backend_addr: str) -> dict:
    cfg = one_service([backend_addr], route={"name": "api", "path_prefix": "/api"})
    cfg["routes"].append({"listener": "outbound", "backends": [{"service": "web"}]})  # route-1
    return cfg


def test_an_unknown_route_is_refused_and_nothing_changes(backend, proxy):
    p = proxy(config(backend().addr))
    with pytest.raises(ConfigError, match=r"add_plugin: routes\[1\]: unknown route 'nosuchroute' "):
        p.add_plugin(Tag(), routes=["api", "nosuchroute"])
    with pytest.raises(ConfigError, match=r"\(valid: api, route-1\)"):
        p.add_plugin(Tag(), routes=["nosuchroute"])
    assert p.plugins() == []
    assert "x-tagged" not in httpx.get(p.url("outbound", "/api/x")).headers
    # A known route is taken, and the plugin runs there only.
    p.add_plugin(Tag(), routes=["route-1"])
    assert httpx.get(p.url("outbound", "/other")).headers["x-tagged"] == "route-1"
    assert "x-tagged" not in httpx.get(p.url("outbound", "/api/x")).headers


def test_a_proxy_not_started_yet_refuses_it_too(backend):
    p = Proxy(config(backend().addr))
    with pytest.raises(ConfigError, match="unknown route 'nosuchroute'"):
        p.add_plugin(Tag(), routes=["nosuchroute"])
    assert p.plugins() == []


def test_a_single_string_is_not_taken_for_a_list_of_letters(backend, proxy):
    p = proxy(config(backend().addr))
    with pytest.raises(ConfigError, match="routes must be a list of route names, not the string 'api'"):
        p.add_plugin(Tag(), routes="api")  # type: ignore[arg-type]
