"""The dashboard (#20): a static page at /ui (HTML, one script, one style sheet and the vendored
dygraphs, all package data in ui/), fed by /ui/snapshot (one snapshot as JSON) and /ui/events (a
snapshot each second as server-sent events). The browser keeps the last minutes and computes the
rates and percentiles from the differences between snapshots: the server keeps no history.

The page runs under a strict Content-Security-Policy: nothing but this server's own files, no
inline script or style, so a name in the config can never run as code in an operator's browser."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..serving import current_server_closing
from .contract import Proxy
from .guards import TEXT

__all__ = ["DASHBOARD_ROUTES", "MAX_STREAMS", "snapshot"]

UI_DIR = Path(__file__).with_name("ui")
# The files the page is made of, by their path under /ui/; nothing else is served from there.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "vendor/dygraph.min.js": "text/javascript; charset=utf-8",
    "vendor/dygraph.min.css": "text/css; charset=utf-8",
    "vendor/LICENSE.dygraphs": "text/plain; charset=utf-8",
}
PAGE = "index.html"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
MAX_STREAMS = 8  # open /ui/events streams at once; the next is answered 503
INTERVAL_SECONDS = 1.0
# How often a stream looks, between snapshots, whether the proxy or the admin server is stopping:
# it then ends at once, cleanly, well within the server's grace.
CHECK_SECONDS = 0.1
SSE = "text/event-stream"


def _asset(name: str, media_type: str) -> Response:
    # Read per request (the files are small): an edited page shows on reload, and a wheel
    # missing a file fails here, by name, rather than at import.
    body = (UI_DIR / name).read_bytes()
    headers = {**SECURITY_HEADERS, "cache-control": "no-cache"}
    return Response(body, media_type=media_type, headers=headers)


def ui_page(request: Request) -> Response:
    """---
    summary: The dashboard, a page that reads /ui/events
    description: >-
      Golden metrics per route and per service with charts of the last five minutes, the
      balancer's view of each service's endpoints, identity, authorization decisions and the
      config version. Served with a Content-Security-Policy that allows this server's own files
      only.
    responses:
      "200":
        description: The page.
        content: {"text/html; charset=utf-8": {schema: {type: string}}}
    """
    return _asset(PAGE, "text/html; charset=utf-8")


def ui_asset(request: Request) -> Response:
    """---
    summary: A file of the dashboard (its script, style sheets, icon and vendored chart library)
    parameters:
      - {name: asset, in: path, required: true, schema: {type: string}, example: app.js}
    responses:
      "200":
        description: The file, with the page's Content-Security-Policy.
        content:
          text/javascript: {schema: {type: string}}
          text/css: {schema: {type: string}}
      "404":
        description: Not one of the dashboard's files.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    name = request.path_params["asset"]
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response("not found\n", status_code=404, media_type=TEXT)
    return _asset(name, media_type)


def snapshot(proxy: Proxy) -> dict[str, Any]:
    """What the dashboard shows at one moment: cumulative numbers (the reader takes differences)
    and the state of balancers, identity and config. Calls into the proxy: run it off the loop."""
    running = proxy.running
    identity: Optional[dict[str, Any]] = proxy.identity() if running else None
    lifecycle = getattr(proxy, "lifecycle", None)
    return {
        "time": time.time(),
        "running": running,
        "stats": proxy.route_stats()
        if running
        else {"buckets_ms": [], "routes": {}, "services": {}, "authorization": []},
        "endpoints": proxy.endpoints() if running else {"services": []},
        "identity": None
        if identity is None
        else {"spiffe_id": identity["spiffe_id"], "expires_at": identity["not_after"]},
        "config": None if lifecycle is None else lifecycle.status(),
    }


async def ui_snapshot(request: Request) -> Response:
    """---
    summary: One dashboard snapshot (what /ui/events sends each second)
    description: >-
      stats as GET /stats and endpoints as GET /endpoints (cumulative: take two snapshots and
      divide their difference by the difference of their times), the workload identity and its
      expiry, and the config status as GET /config/status (null when no lifecycle manages the
      config).
    responses:
      "200":
        description: The snapshot.
        content:
          application/json:
            schema:
              type: object
              required: [time, running, stats, endpoints, identity, config]
              properties:
                time: {type: number, description: unix seconds}
                running: {type: boolean}
                stats: {type: object, description: as GET /stats}
                endpoints: {type: object, description: as GET /endpoints}
                identity:
                  type: [object, "null"]
                  properties: {spiffe_id: {type: [string, "null"]}, expires_at: {type: number}}
                config: {type: [object, "null"], description: as GET /config/status}
    """
    proxy: Proxy = request.app.state.proxy
    body = json.dumps(await run_in_threadpool(snapshot, proxy), indent=2) + "\n"
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


class _Streams:
    """Counts the open event streams, so that dashboards left open cannot take the admin API's
    connections (it has 128) or its worker threads. Only touched on the server's event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


class _CountedStream(StreamingResponse):
    """A stream that gives its slot back however it ends (sent out, client gone, server closing),
    even if its body was never started."""

    def __init__(self, streams: _Streams, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.give_back()


def _streams(request: Request) -> _Streams:
    state = request.app.state
    if not hasattr(state, "ui_streams"):
        state.ui_streams = _Streams(MAX_STREAMS)
    return state.ui_streams  # type: ignore[no-any-return]


async def ui_events(request: Request) -> Response:
    """---
    summary: Dashboard snapshots as server-sent events, one a second
    description: >-
      Each event's data is a snapshot as GET /ui/snapshot returns it; the stream sends one
      at once and then one each second until the client goes or the proxy stops. At most 8
      streams are open at once.
    responses:
      "200":
        description: The stream of `snapshot` events.
        content: {text/event-stream: {schema: {type: string}}}
      "503":
        description: 8 streams are open already.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    proxy: Proxy = request.app.state.proxy
    # The type as given (Starlette would add a charset; SSE is UTF-8 by definition).
    headers = {"content-type": SSE, "cache-control": "no-store", "x-accel-buffering": "no"}
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers)
    streams = _streams(request)
    if not streams.take():
        return Response(
            f"{streams.limit} dashboard streams are open already; close one or use /ui/snapshot\n",
            status_code=503,
            media_type=TEXT,
            headers={"retry-after": "5"},
        )
    return _CountedStream(streams, _events(proxy), headers=headers)


async def _events(proxy: Proxy) -> AsyncIterator[str]:
    # "retry" tells EventSource to reconnect after 2 s when the stream ends (a proxy restarted).
    yield "retry: 2000\n\n"
    while not current_server_closing():
        data = await run_in_threadpool(snapshot, proxy)
        yield f"event: snapshot\ndata: {json.dumps(data)}\n\n"
        for _ in range(round(INTERVAL_SECONDS / CHECK_SECONDS)):
            if not data["running"] or not proxy.running or current_server_closing():
                return
            await asyncio.sleep(CHECK_SECONDS)


DASHBOARD_ROUTES = [
    Route("/ui", ui_page, methods=["GET"]),
    Route("/ui/snapshot", ui_snapshot, methods=["GET"]),
    Route("/ui/events", ui_events, methods=["GET"]),
    Route("/ui/{asset:path}", ui_asset, methods=["GET"]),
]
