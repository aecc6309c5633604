"""Python plugins: hooks the data plane calls for routes that have plugins.

A plugin is a module (file or import path) or an object whose methods are
named after phases:

- ``on_request(req)``: change headers, path or service, or return a
  ``Response`` to answer directly;
- ``on_upstream_request(req, endpoint)``: change what goes upstream;
- ``on_response(req, resp)``: change the response status and headers;
- ``on_log(summary)``: after the response is sent, off the request path.

Hooks may be ``async``. Requests on routes without plugins never enter Python.

The package: ``types`` (what hooks see), ``loader`` (specs, import, hook-name checks),
``runner`` (``PluginHost``, which Rust calls), ``watch`` (reload on file change) and
``stats`` (per-hook metrics).
"""

from __future__ import annotations

from .loader import PHASES, PluginSpec, load_plugin
from .runner import PluginHost
from .types import Endpoint, Headers, Request, Response

__all__ = ["PHASES", "Headers", "Request", "Response", "Endpoint", "PluginHost", "PluginSpec", "load_plugin"]
