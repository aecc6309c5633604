"""PluginHost: runs plugin hooks for the data plane. Rust (src/plugin.rs) calls its ``on_*``
methods; the proxy loads, adds, reloads, starts and stops it.

Sync hooks run inline on the calling thread. From a phase's first async hook on, the rest of
that phase runs on one asyncio loop in its own thread, and the caller gets a
``concurrent.futures.Future``; Rust waits for its done-callback without blocking a worker.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import _core
from ..errors import PluginError
from .loader import PHASES, LoadedPlugin, PluginSpec, load, source_path
from .stats import HookCounts, HookStats
from .types import Endpoint, Headers, Request, Response
from .watch import SourceWatcher

if TYPE_CHECKING:
    import asyncio

__all__ = ["PluginHost"]

_NEXT = object()  # a hook's outcome that lets the phase go on to the next hook
_FAIL_CLOSED = (
    "respond",
    500,
    [("content-type", "text/plain"), ("meshcore-error", "plugin error")],
    b"plugin error\n",
)


def _respond(resp: Response) -> tuple[Any, ...]:
    return ("respond", resp.status, resp.headers.items(), resp.body)


def _log(message: str) -> None:
    print(f"meshcore: plugins: {message}", file=sys.stderr, flush=True)


class PluginHost:
    """Runs plugin hooks for the data plane. Rust calls the ``on_*`` methods below."""

    def __init__(self, specs: list[PluginSpec], base_dir: Optional[Path] = None):
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._reloading = threading.Lock()  # one reload at a time (the watcher and the admin API)
        self._plugins: list[LoadedPlugin] = [load(s, base_dir) for s in specs]
        self._by_route: dict[str, list[LoadedPlugin]] = {}
        self._masks: dict[str, int] = {}
        self.stats = HookStats()
        self.errors: dict[str, str] = {}  # plugin -> last load error
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_ready = threading.Event()
        self._watcher: Optional[SourceWatcher] = None

    # -- loading --------------------------------------------------------------------------------

    def add(self, spec: PluginSpec) -> None:
        loaded = load(spec, self._base_dir)
        with self._lock:
            self._plugins = [*self._plugins, loaded]
            self._by_route = {}
            self._masks = {}

    def reload(self) -> dict[str, str]:
        """Loads every file or module plugin again. A plugin that fails keeps its old version;
        returns the errors by plugin name. (A file is read again; a module already imported is
        not, but its class, if one is named, is instantiated anew.)"""
        with self._reloading:
            before = self._plugins
            errors: dict[str, str] = {}
            fresh: list[LoadedPlugin] = []
            for old in before:
                if old.spec.obj is not None:
                    fresh.append(old)
                    continue
                try:
                    fresh.append(load(old.spec, self._base_dir))
                except PluginError as e:
                    errors[old.spec.name] = str(e)
                    path = source_path(old.spec, self._base_dir)
                    if path is not None and path.exists():
                        old.mtime = path.stat().st_mtime_ns  # this version failed: wait for the next edit
                    fresh.append(old)
                    _log(f"reload of {old.spec.name} failed, keeping the running version: {e}")
            with self._lock:
                # add() may have appended plugins while these loaded: they stay, after the rest.
                self._plugins = fresh + self._plugins[len(before) :]
                self._by_route = {}
                self._masks = {}
            self.errors = errors
        return errors

    def metrics_report(self) -> tuple[list[HookCounts], list[str]]:
        """What the core renders at a scrape: every hook's numbers, and the text plugins with a
        `metrics()` method write themselves (theirs, appended as written)."""
        own: list[str] = []
        for p in self._plugins:
            extra = getattr(p.target, "metrics", None)
            if callable(extra):
                try:
                    own.append(str(extra()))
                except Exception as e:  # noqa: BLE001 - a broken plugin must not break /metrics
                    _log(f"{p.spec.name}.metrics failed: {e}")
        return self.stats.snapshot(), own

    def render_metrics(self) -> str:
        """The plugin families alone as Prometheus text, for a host without a proxy (the
        testing kit); a running proxy's `metrics()` includes them."""
        return _core.render_plugin_metrics(self.metrics_report())

    def routes_with_plugins(self, routes: list[str]) -> set[str]:
        return {r for r in routes if any(p.spec.routes is None or r in p.spec.routes for p in self._plugins)}

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.spec.name,
                "hooks": sorted(p.hooks),
                "routes": sorted(p.spec.routes) if p.spec.routes is not None else "all",
                "on_error": p.spec.on_error,
                "error": self.errors.get(p.spec.name),
            }
            for p in self._plugins
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._run_loop, name="meshcore-plugins", daemon=True).start()
        self._loop_ready.wait(5)
        if any(p.spec.path for p in self._plugins):
            self._watcher = SourceWatcher(lambda: self._plugins, self._base_dir, self._reload_changed)
            self._watcher.start()

    def _run_loop(self) -> None:
        import asyncio  # imported here: a proxy without plugins never pays for it

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop_ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _reload_changed(self) -> None:
        if not self.reload():
            _log("reloaded plugins after a file change")

    # -- running hooks --------------------------------------------------------------------------

    def _for_route(self, route: str) -> list[LoadedPlugin]:
        plugins = self._by_route.get(route)
        if plugins is None:
            with self._lock:
                plugins = [p for p in self._plugins if p.spec.routes is None or route in p.spec.routes]
                self._by_route[route] = plugins
        return plugins

    def _after(
        self, plugin: LoadedPlugin, phase: str, result: Any = None, error: Optional[BaseException] = None
    ) -> Any:
        """What one hook's outcome means for its phase: _NEXT to go on, or the answer.
        A failure is counted and logged, then the plugin's on_error decides."""
        if error is not None:
            self.stats.error(plugin.spec.name, phase)
            _log(f"{plugin.spec.name}.{phase} failed: {type(error).__name__}: {error}")
            return _NEXT if plugin.spec.on_error == "fail-open" else _FAIL_CLOSED
        return _respond(result) if isinstance(result, Response) else _NEXT

    def _run(self, phase: str, route: str, args: tuple[Any, ...], finish: Callable[[], Any]) -> Any:
        """Runs a phase's hooks in order; sync hooks inline, and from the first async hook on,
        the rest on the plugin loop (the caller then gets a concurrent future)."""
        plugins = [p for p in self._for_route(route) if phase in p.hooks]
        for i, plugin in enumerate(plugins):
            if plugin.is_async[phase]:
                import asyncio

                return asyncio.run_coroutine_threadsafe(
                    self._run_async(phase, plugins[i:], args, finish),
                    self._loop,  # type: ignore[arg-type]  # set by start(), which comes first
                )
            started = time.perf_counter()
            try:
                answer = self._after(plugin, phase, plugin.hooks[phase](*args))
            except Exception as e:  # noqa: BLE001 - a hook's failure must not hurt other requests
                answer = self._after(plugin, phase, error=e)
            self.stats.observe(plugin.spec.name, phase, time.perf_counter() - started)
            if answer is not _NEXT:
                return answer
        return finish()

    async def _run_async(
        self, phase: str, plugins: list[LoadedPlugin], args: tuple[Any, ...], finish: Callable[[], Any]
    ) -> Any:
        import asyncio

        for plugin in plugins:
            started = time.perf_counter()
            try:
                result = plugin.hooks[phase](*args)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, plugin.spec.timeout)
                answer = self._after(plugin, phase, result)
            except Exception as e:  # noqa: BLE001 - includes asyncio.TimeoutError
                answer = self._after(plugin, phase, error=e)
            self.stats.observe(plugin.spec.name, phase, time.perf_counter() - started)
            if answer is not _NEXT:
                return answer
        return finish()

    # Entry points for Rust. Each returns None (nothing changed), a change, a
    # ("respond", status, headers, body) short-circuit, or a concurrent future of one of these.

    def on_request(
        self,
        route: str,
        method: str,
        path: str,
        authority: str,
        headers: list[tuple[str, str]],
        peer: str,
        identity: Optional[str],
        service: Optional[str],
    ) -> tuple[Request, Any, int]:
        req = Request(method, path, authority, Headers(headers), peer, identity, route, service)
        answer = self._run("on_request", route, (req,), req._take_changes)
        return req, answer, self.phases(route)

    def phases(self, route: str) -> int:
        """Bit i set: some plugin on this route has PHASES[i]. Rust skips the other phases."""
        mask = self._masks.get(route)
        if mask is None:
            mask = 0
            for plugin in self._for_route(route):
                for i, phase in enumerate(PHASES):
                    if phase in plugin.hooks:
                        mask |= 1 << i
            self._masks[route] = mask
        return mask

    def on_upstream_request(self, req: Request, addr: str, zone: str) -> Any:
        return self._run("on_upstream_request", req.route, (req, Endpoint(addr, zone)), req._take_changes)

    def on_response(self, req: Request, status: int, headers: list[tuple[str, str]]) -> Any:
        resp = Response(status, Headers(headers))
        return self._run("on_response", req.route, (req, resp), resp._changes)

    def on_log(self, req: Optional[Request], summary: dict[str, Any]) -> None:
        """Rust calls this off the request path, so it never delays a response; sync hooks run
        here, async ones on the plugin loop (their outcome goes nowhere). `req` is None for a
        request the proxy answered before any hook saw it (a 403, a 404, a rate limit ...):
        the plugins of its route get it, or those on every route when it had none."""
        summary["ctx"] = req.ctx if req is not None else {}
        self._run("on_log", req.route if req is not None else summary["route"], (summary,), lambda: None)
