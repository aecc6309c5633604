"""Loading plugins: where one comes from (PluginSpec), importing it, and checking its hook names.

A hook is a method (or module function) named after a phase; any other ``on_*`` name is a
PluginError, so a misspelled hook fails at load time instead of never being called.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import PluginError

__all__ = ["PHASES", "PluginSpec", "LoadedPlugin", "load", "load_plugin", "source_path"]

# Order matters: bit i of the phase mask Rust gets (plugin.rs) stands for PHASES[i].
PHASES = ("on_request", "on_upstream_request", "on_response", "on_log")

Hooks = dict[str, Callable[..., Any]]


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


def source_path(spec: PluginSpec, base_dir: Optional[Path]) -> Optional[Path]:
    """The file of a file plugin; a relative path is relative to the config's directory."""
    if spec.path is None:
        return None
    path = Path(spec.path)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _hooks_of(target: Any, where: str) -> Hooks:
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


def _import_file(path: Path, name: str) -> Any:
    # A fresh module name on every load, so a reload never reuses the previous version.
    module_name = f"meshcore_plugin_{name}_{time.monotonic_ns()}"
    try:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise PluginError(f"{path}: not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        # A file may hold its hooks in a class named Plugin instead of module functions.
        if hasattr(module, "Plugin") and inspect.isclass(module.Plugin):
            return module.Plugin()
        return module
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to import or construct it is the plugin's
        # Only the plugin file itself missing is "no such file"; a file its code opens is its error.
        if isinstance(e, FileNotFoundError) and e.filename == str(path):
            raise PluginError(f"{path}: no such plugin file") from None
        raise PluginError(f"{path}: failed to load: {type(e).__name__}: {e}") from e


def _import_module(reference: str) -> Any:
    """`package.module` or `package.module:Name`; a class is instantiated."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
        target = getattr(module, attr) if attr else module
        if inspect.isclass(target):
            target = target()
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"{reference}: failed to load: {type(e).__name__}: {e}") from e
    return target


def load_plugin(spec: PluginSpec, base_dir: Optional[Path] = None) -> tuple[Any, Hooks]:
    """Imports (or re-imports) a plugin; returns the plugin object (or module) and its hooks."""
    path = source_path(spec, base_dir)
    if spec.obj is not None:
        target, where = spec.obj, spec.name
    elif path is not None:
        target, where = _import_file(path, spec.name), str(path)
    else:
        assert spec.module is not None
        target, where = _import_module(spec.module), spec.module
    return target, _hooks_of(target, where)


class LoadedPlugin:
    """One plugin as the host runs it: its hooks, which of them are async, and the version on
    disk they came from (the watcher reloads when the file's mtime moves past it)."""

    __slots__ = ("spec", "target", "hooks", "is_async", "mtime")

    def __init__(self, spec: PluginSpec, target: Any, hooks: Hooks, mtime: float):
        self.spec = spec
        self.target = target
        self.hooks = hooks
        # unwrap: an `async def` behind a functools.wraps decorator is still async.
        self.is_async = {p: inspect.iscoroutinefunction(inspect.unwrap(h)) for p, h in hooks.items()}
        self.mtime = mtime


def load(spec: PluginSpec, base_dir: Optional[Path] = None) -> LoadedPlugin:
    """Loads a plugin for the host; errors name where it was configured, when that is known."""
    path = source_path(spec, base_dir)
    # Taken before the import: an edit made while it runs is then seen as a change.
    mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0
    try:
        target, hooks = load_plugin(spec, base_dir)
    except PluginError as e:
        if spec.origin is None:
            raise
        raise PluginError(f"{spec.origin}: {e}") from e.__cause__
    return LoadedPlugin(spec, target, hooks, mtime)
