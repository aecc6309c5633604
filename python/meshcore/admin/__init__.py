"""The admin HTTP API: health, metrics, config, endpoints and plugins of a running proxy,
described by OpenAPI at /openapi.json. It runs on a thread of its own and never sits on the
request path: the proxy answers traffic in Rust whatever happens here.

    contract.py  what the admin needs of the proxy (a Protocol, so neither imports the other)
    api.py       the Starlette app: routes and handlers, each described by its docstring
    openapi.py   the OpenAPI document, built from the route table
    config_routes.py  /config/status, history, PUT /config, reload and rollback (#17)
    dashboard.py /ui: the dashboard's page (package data in ui/), /ui/snapshot and /ui/events
    guards.py    changes from loopback or with an admin token; request bodies capped
    server.py    uvicorn on a background thread, on a socket bound up front
"""

from __future__ import annotations

from .server import AdminServer

__all__ = ["AdminServer"]
