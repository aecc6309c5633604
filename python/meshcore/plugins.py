"""Python plugins: hooks the data plane calls for routes that have plugins.

A plugin is a module (file or import path) or an object whose methods are
named after phases:

- ``on_request(req)``: change headers, path or service, or return a
  ``Response`` to answer directly;
- ``on_upstream_request(req, endpoint)``: change what goes upstream;
- ``on_response(req, resp)``: change the response status and headers;
- ``on_log(summary)``: after the response is sent, off the request path.

Hooks may be ``async``. Requests on routes without plugins never enter Python.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .errors import PluginError

if TYPE_CHECKING:
    import asyncio

__all__ = ["PHASES", "Headers", "Request", "Response", "Endpoint", "PluginHost", "PluginSpec", "load_plugin"]

PHASES = ("on_request", "on_upstream_request", "on_response", "on_log")
# Seconds; the same buckets as Prometheus client defaults, shifted down for in-process hooks.
_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class Headers:
    """Case-insensitive, multi-valued headers that keep their order."""

    __slots__ = ("_items", "dirty")

    def __init__(self, items: Union[None, list[tuple[str, str]], dict[str, str]] = None):
        if isinstance(items, dict):
            items = list(items.items())
        self._items: list[tuple[str, str]] = list(items or [])
        self.dirty = False

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.remove(name)
        self._items.append((name.lower(), str(value)))
        self.dirty = True

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), str(value)))
        self.dirty = True

    def remove(self, name: str) -> None:
        lname = name.lower()
        kept = [(k, v) for k, v in self._items if k.lower() != lname]
        if len(kept) != len(self._items):
            self._items = kept
            self.dirty = True

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.remove(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.lower() for k, _ in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Request:
    """What hooks see of a request. Changes to headers, path and service are applied."""

    __slots__ = (
        "method",
        "_path",
        "authority",
        "headers",
        "peer",
        "identity",
        "route",
        "_service",
        "ctx",
        "_changed",
    )

    def __init__(
        self,
        method: str,
        path: str,
        authority: str,
        headers: Headers,
        peer: str,
        identity: Optional[str],
        route: str,
        service: Optional[str],
    ):
        self.method = method
        self._path = path
        self.authority = authority
        self.headers = headers
        self.peer = peer
        self.identity = identity
        self.route = route
        self._service = service
        self.ctx: dict[str, Any] = {}
        self._changed = False

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        self._path = value
        self._changed = True

    @property
    def service(self) -> Optional[str]:
        return self._service

    @service.setter
    def service(self, value: str) -> None:
        self._service = value
        self._changed = True

    def _take_changes(self) -> Optional[tuple[str, str, Optional[list[tuple[str, str]]], Optional[str]]]:
        if not (self._changed or self.headers.dirty):
            return None
        headers = self.headers.items() if self.headers.dirty else None
        self._changed = self.headers.dirty = False
        return ("request", self._path, headers, self._service)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.authority}{self._path} route={self.route}>"


class Response:
    """A response: returned from ``on_request`` to answer directly, or seen by ``on_response``."""

    __slots__ = ("status", "headers", "body", "_original_status")

    def __init__(
        self,
        status: int = 200,
        headers: Union[None, dict[str, str], list[tuple[str, str]], Headers] = None,
        body: Union[bytes, str] = b"",
    ):
        self.status = int(status)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self._original_status = self.status

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class Endpoint:
    __slots__ = ("addr", "zone")

    def __init__(self, addr: str, zone: str):
        self.addr = addr
        self.zone = zone

    def __repr__(self) -> str:
        return f"<Endpoint {self.addr} zone={self.zone}>"


class PluginSpec:
    """How one plugin is configured: where it comes from, where it applies, what failures do."""

    def __init__(
        self,
        path: Optional[str] = None,
        module: Optional[str] = None,
        obj: Any = None,
        routes: Optional[list[str]] = None,
        on_error: str = "fail-closed",
        timeout: float = 1.0,
        name: Optional[str] = None,
        origin: Optional[str] = None,
    ):
        if sum(x is not None for x in (path, module, obj)) != 1:
            raise PluginError("a plugin needs exactly one of path, module or an object")
        if on_error not in ("fail-closed", "fail-open"):
            raise PluginError(f"on_error must be 'fail-closed' or 'fail-open', not {on_error!r}")
        self.path, self.module, self.obj = path, module, obj
        self.routes = set(routes) if routes is not None else None
        self.on_error = on_error
        self.timeout = timeout
        self.name = name or path and Path(path).stem or module or type(obj).__name__
        # Where the plugin was configured ("mesh.toml: plugins[0].path"), for load errors.
        self.origin = origin


def _hooks_of(target: Any, where: str) -> dict[str, Callable[..., Any]]:
    """The phase hooks of a plugin object or module; unknown `on_*` names are errors."""
    hooks = {}
    for attr in dir(target):
        if not attr.startswith("on_"):
            continue
        if attr not in PHASES:
            close = difflib.get_close_matches(attr, PHASES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; phases are {', '.join(PHASES)}"
            raise PluginError(f"{where}: unknown hook {attr!r}{hint}")
        hook = getattr(target, attr)
        if callable(hook):
            hooks[attr] = hook
    if not hooks:
        raise PluginError(f"{where}: defines no hooks (phases are {', '.join(PHASES)})")
    return hooks


def load_plugin(
    spec: PluginSpec, base_dir: Optional[Path] = None
) -> tuple[Any, dict[str, Callable[..., Any]]]:
    """Imports (or re-imports) a plugin; returns the plugin object (or module) and its hooks."""
    if spec.obj is not None:
        return spec.obj, _hooks_of(spec.obj, spec.name)
    if spec.path is not None:
        path = Path(spec.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        module_name = f"meshcore_plugin_{spec.name}_{time.monotonic_ns()}"
        try:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise PluginError(f"{path}: not a Python file")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        except PluginError:
            raise
        except FileNotFoundError:
            raise PluginError(f"{path}: no such plugin file") from None
        except Exception as e:  # noqa: BLE001 - any import-time failure is the plugin's
            raise PluginError(f"{path}: failed to load: {type(e).__name__}: {e}") from e
        target: Any = module
        if hasattr(module, "Plugin") and inspect.isclass(module.Plugin):
            target = module.Plugin()
        return target, _hooks_of(target, str(path))
    assert spec.module is not None
    module_name, _, attr = spec.module.partition(":")
    try:
        module = importlib.import_module(module_name)
        target = getattr(module, attr) if attr else module
        if inspect.isclass(target):
            target = target()
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"{spec.module}: failed to load: {type(e).__name__}: {e}") from e
    return target, _hooks_of(target, spec.module)


class _Loaded:
    __slots__ = ("spec", "target", "hooks", "is_async", "mtime")

    def __init__(self, spec: PluginSpec, target: Any, hooks: dict[str, Callable[..., Any]], mtime: float):
        self.spec = spec
        self.target = target
        self.hooks = hooks
        # unwrap: an `async def` behind a functools.wraps decorator is still async.
        self.is_async = {p: inspect.iscoroutinefunction(inspect.unwrap(h)) for p, h in hooks.items()}
        self.mtime = mtime


class _Stats:
    """plugin_errors_total and plugin_duration_seconds, by plugin and phase."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: dict[tuple[str, str], int] = {}
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, plugin: str, phase: str, seconds: float) -> None:
        key = (plugin, phase)
        with self.lock:
            h = self.durations.get(key)
            if h is None:
                h = self.durations[key] = [0.0] * (len(_BUCKETS) + 2)  # buckets, count, sum
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    h[i] += 1
                    break
            h[-2] += 1
            h[-1] += seconds

    def error(self, plugin: str, phase: str) -> None:
        with self.lock:
            self.errors[(plugin, phase)] = self.errors.get((plugin, phase), 0) + 1

    def render(self) -> str:
        out = [
            "# HELP plugin_errors_total Plugin hooks that raised or timed out.",
            "# TYPE plugin_errors_total counter",
        ]
        with self.lock:
            for (plugin, phase), n in sorted(self.errors.items()):
                out.append(f'plugin_errors_total{{plugin="{_label(plugin)}",phase="{phase}"}} {n}')
            out += [
                "# HELP plugin_duration_seconds Time spent in plugin hooks.",
                "# TYPE plugin_duration_seconds histogram",
            ]
            for (plugin, phase), h in sorted(self.durations.items()):
                labels = f'plugin="{_label(plugin)}",phase="{phase}"'
                cumulative = 0.0
                for bound, n in zip(_BUCKETS, h):
                    cumulative += n
                    out.append(f'plugin_duration_seconds_bucket{{{labels},le="{bound}"}} {int(cumulative)}')
                out.append(f'plugin_duration_seconds_bucket{{{labels},le="+Inf"}} {int(h[-2])}')
                out.append(f"plugin_duration_seconds_sum{{{labels}}} {h[-1]}")
                out.append(f"plugin_duration_seconds_count{{{labels}}} {int(h[-2])}")
        return "\n".join(out) + "\n"


_NEXT = object()  # a hook's outcome that lets the phase go on to the next hook
_FAIL_CLOSED = (
    "respond",
    500,
    [("content-type", "text/plain"), ("meshcore-error", "plugin error")],
    b"plugin error\n",
)


def _label(value: str) -> str:
    """A Prometheus label value, escaped by the same rule as the core's metrics."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _log(message: str) -> None:
    print(f"meshcore: plugins: {message}", file=sys.stderr, flush=True)


class PluginHost:
    """Runs plugin hooks for the data plane. Rust calls the ``on_*`` methods below."""

    def __init__(self, specs: list[PluginSpec], base_dir: Optional[Path] = None):
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._plugins: list[_Loaded] = [self._load(s) for s in specs]
        self._by_route: dict[str, list[_Loaded]] = {}
        self._masks: dict[str, int] = {}
        self.stats = _Stats()
        self.errors: dict[str, str] = {}  # plugin -> last load error
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_ready = threading.Event()
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    # -- loading --------------------------------------------------------------------------------

    def _source_path(self, spec: PluginSpec) -> Optional[Path]:
        if spec.path is None:
            return None
        p = Path(spec.path)
        return p if p.is_absolute() or self._base_dir is None else self._base_dir / p

    def _load(self, spec: PluginSpec) -> _Loaded:
        path = self._source_path(spec)
        mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0
        try:
            target, hooks = load_plugin(spec, self._base_dir)
        except PluginError as e:
            if spec.origin is None:
                raise
            raise PluginError(f"{spec.origin}: {e}") from e.__cause__
        return _Loaded(spec, target, hooks, mtime)

    def add(self, spec: PluginSpec) -> None:
        loaded = self._load(spec)
        with self._lock:
            self._plugins = [*self._plugins, loaded]
            self._by_route = {}
            self._masks = {}

    def reload(self) -> dict[str, str]:
        """Re-imports every file or module plugin. A plugin that fails keeps its old version;
        returns the errors by plugin name."""
        errors = {}
        fresh = []
        for old in self._plugins:
            if old.spec.obj is not None:
                fresh.append(old)
                continue
            try:
                fresh.append(self._load(old.spec))
            except PluginError as e:
                errors[old.spec.name] = str(e)
                path = self._source_path(old.spec)
                if path is not None and path.exists():
                    old.mtime = path.stat().st_mtime_ns  # this version failed: wait for the next edit
                fresh.append(old)
                _log(f"reload of {old.spec.name} failed, keeping the running version: {e}")
        with self._lock:
            self._plugins = fresh
            self._by_route = {}
            self._masks = {}
        self.errors = errors
        return errors

    def render_metrics(self) -> str:
        """The hooks' own metrics, plus what plugins with a `metrics()` method report."""
        parts = [self.stats.render()]
        for p in self._plugins:
            extra = getattr(p.target, "metrics", None)
            if callable(extra):
                try:
                    parts.append(str(extra()).rstrip("\n") + "\n")
                except Exception as e:  # noqa: BLE001 - a broken plugin must not break /metrics
                    _log(f"{p.spec.name}.metrics failed: {e}")
        return "".join(parts)

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
            self._watcher = threading.Thread(target=self._watch, name="meshcore-plugin-watch", daemon=True)
            self._watcher.start()

    def _run_loop(self) -> None:
        import asyncio  # imported here: a proxy without plugins never pays for it

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop_ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            changed = False
            for p in self._plugins:
                path = self._source_path(p.spec)
                if path is not None and path.exists() and path.stat().st_mtime_ns != p.mtime:
                    changed = True
            if changed:
                time.sleep(0.1)  # let the writer finish
                errors = self.reload()
                if not errors:
                    _log("reloaded plugins after a file change")

    # -- running hooks --------------------------------------------------------------------------

    def _for_route(self, route: str) -> list[_Loaded]:
        plugins = self._by_route.get(route)
        if plugins is None:
            with self._lock:
                plugins = [p for p in self._plugins if p.spec.routes is None or route in p.spec.routes]
                self._by_route[route] = plugins
        return plugins

    def _failed(self, plugin: _Loaded, phase: str, error: BaseException) -> Optional[tuple]:
        self.stats.error(plugin.spec.name, phase)
        _log(f"{plugin.spec.name}.{phase} failed: {type(error).__name__}: {error}")
        return None if plugin.spec.on_error == "fail-open" else _FAIL_CLOSED

    def _after(
        self, plugin: _Loaded, phase: str, result: Any = None, error: Optional[BaseException] = None
    ) -> Any:
        """What one hook's outcome means for its phase: _NEXT to go on, or the answer."""
        if error is not None:
            failure = self._failed(plugin, phase, error)
            return _NEXT if failure is None else failure
        return _respond(result) if isinstance(result, Response) else _NEXT

    def _run(self, phase: str, route: str, args: tuple, finish: Callable[[], Any]) -> Any:
        """Runs a phase's hooks in order; sync hooks inline, and from the first async hook on,
        the rest on the plugin loop (the caller then gets a concurrent future)."""
        plugins = [p for p in self._for_route(route) if phase in p.hooks]
        for i, plugin in enumerate(plugins):
            if plugin.is_async[phase]:
                import asyncio

                return asyncio.run_coroutine_threadsafe(
                    self._run_async(phase, plugins[i:], args, finish), self._loop
                )  # type: ignore[arg-type]
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
        self, phase: str, plugins: list[_Loaded], args: tuple, finish: Callable[[], Any]
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

        def changes() -> Optional[tuple]:
            if resp.status == resp._original_status and not resp.headers.dirty:
                return None
            return ("response", resp.status, resp.headers.items())

        return self._run("on_response", req.route, (req, resp), changes)

    def on_log(self, req: Optional[Request], summary: dict[str, Any]) -> None:
        """Rust calls this off the request path, so it never delays a response; sync hooks run
        here, async ones on the plugin loop (their outcome goes nowhere). `req` is None for a
        request the proxy answered before any hook saw it (a 403, a 404, a rate limit ...):
        the plugins of its route get it, or those on every route when it had none."""
        summary["ctx"] = req.ctx if req is not None else {}
        self._run("on_log", req.route if req is not None else summary["route"], (summary,), lambda: None)


def _respond(resp: Response) -> tuple:
    return ("respond", resp.status, resp.headers.items(), resp.body)
