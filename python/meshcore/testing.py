"""A kit for plugin authors: run a plugin's hooks against synthetic requests,
with no sockets and no proxy, through the same code the proxy uses.

    from meshcore.testing import PluginTester

    tester = PluginTester(MyPlugin())
    exchange = tester.request("GET", "/admin", headers={"authorization": "Bearer t0ken"})
    assert exchange.short_circuit is None
    assert exchange.upstream().headers["x-user"] == "alice"
    assert exchange.respond(200).headers["x-served-by"] == "meshcore"
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Optional, Union

from .plugins import Headers, PluginHost, PluginSpec, Request, Response

__all__ = ["PluginTester", "Exchange", "Upstream"]


def _settle(answer: Any, timeout: float = 10.0) -> Any:
    return answer.result(timeout) if isinstance(answer, concurrent.futures.Future) else answer


def _as_response(answer: tuple[Any, ...]) -> Response:
    _, status, headers, body = answer
    return Response(status, headers, body)


class Upstream:
    """What would be sent upstream after `on_upstream_request`."""

    def __init__(self, path: str, headers: Headers, short_circuit: Optional[Response]):
        self.path = path
        self.headers = headers
        self.short_circuit = short_circuit


class Exchange:
    """One request's trip through the hooks."""

    def __init__(self, host: PluginHost, request: Request, answer: Any):
        self._host = host
        self.request = request
        self.short_circuit: Optional[Response] = None
        if answer is not None and answer[0] == "respond":
            self.short_circuit = _as_response(answer)

    def upstream(self, addr: str = "127.0.0.1:8080", zone: str = "zone-a") -> Upstream:
        answer = _settle(self._host.on_upstream_request(self.request, addr, zone))
        short = _as_response(answer) if answer is not None and answer[0] == "respond" else None
        return Upstream(self.request.path, self.request.headers, short)

    def respond(self, status: int = 200, headers: Union[None, dict[str, str]] = None) -> Response:
        """Runs `on_response` on an upstream answer; returns what the client would get."""
        answer = _settle(self._host.on_response(self.request, status, list((headers or {}).items())))
        if answer is None:
            return Response(status, headers)
        if answer[0] == "respond":
            return _as_response(answer)
        _, new_status, new_headers = answer
        return Response(new_status, new_headers)

    def log(self, **summary: Any) -> None:
        """Runs `on_log` now, on this thread (the proxy runs it later, off the request path)."""
        summary = {
            "status": 200,
            "route": self.request.route,
            "method": self.request.method,
            "path": self.request.path,
            **summary,
            "ctx": self.request.ctx,
        }
        _settle(self._host._run("on_log", self.request.route, (summary,), lambda: None))


class PluginTester:
    """Loads one plugin (an object, a file path, or "package.module:Class") and runs its hooks."""

    def __init__(
        self, plugin: Any, route: str = "default", on_error: str = "fail-closed", timeout: float = 1.0
    ):
        if isinstance(plugin, (str, Path)) and (str(plugin).endswith(".py") or Path(plugin).exists()):
            spec = PluginSpec(path=str(plugin), on_error=on_error, timeout=timeout)
        elif isinstance(plugin, str):
            spec = PluginSpec(module=plugin, on_error=on_error, timeout=timeout)
        else:
            spec = PluginSpec(obj=plugin, on_error=on_error, timeout=timeout)
        self.route = route
        self.host = PluginHost([spec])
        self.host.start()

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Union[None, dict[str, str]] = None,
        authority: str = "test.local",
        peer: str = "127.0.0.1:50000",
        identity: Optional[str] = None,
        service: Optional[str] = None,
    ) -> Exchange:
        req, answer, _phases = self.host.on_request(
            self.route, method, path, authority, list((headers or {}).items()), peer, identity, service
        )
        return Exchange(self.host, req, _settle(answer))

    def close(self) -> None:
        self.host.stop()

    def __enter__(self) -> PluginTester:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
