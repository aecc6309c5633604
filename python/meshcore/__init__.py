"""meshcore: a service-mesh data plane with a Rust core, driven from Python."""

from __future__ import annotations

from ._core import __version__
from .config import Config, load
from .errors import BindError, ConfigError, MeshcoreError, PluginError, TlsError
from .plugins import Headers, Request, Response
from .proxy import Proxy

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
