"""meshcore: a service-mesh data plane with a Rust core, driven from Python.

Importing the package loads only the native module and the exception types. `Proxy`, `Config`,
`load` and the plugin types load on first use, so that a script does not pay for pydantic,
the admin server or the identity service it never touches.
"""

from __future__ import annotations

import importlib

from ._core import __version__
from .errors import BindError, ConfigError, MeshcoreError, PluginError, TlsError

# Not `typing.TYPE_CHECKING`: importing typing would be most of this module's import time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config, load
    from .plugins import Headers, Request, Response
    from .proxy import Proxy

# Public name -> the submodule that defines it.
_LAZY = {
    "Proxy": "proxy",
    "Request": "plugins",
    "Response": "plugins",
    "Headers": "plugins",
    "Config": "config",
    "load": "config",
}

__all__ = [
    "__version__",
    "Proxy",
    "Request",
    "Response",
    "Headers",
    "Config",
    "load",
    "MeshcoreError",
    "ConfigError",
    "BindError",
    "TlsError",
    "PluginError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
