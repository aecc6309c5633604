"""GET /tap: live request summaries from the proxy's core, as server-sent events or JSON lines.
A tap costs requests nothing until one is open; a slow reader never slows them (the core drops
what does not fit in the tap's queue and counts it, and the stream says so)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._core import MeshcoreError
from ..serving import current_server_closing
from .contract import Proxy
from .guards import TEXT

QUEUE = 1024  # summaries a tap holds unread before it drops
POLL_SECONDS = 0.5  # how long one read waits: the stream notices a stopped proxy this fast
KEEPALIVE_SECONDS = 15.0  # an idle stream sends a comment (SSE) or an empty line this often
FILTERS = ("route", "service", "authority")
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def _bad(reason: str) -> Response:
    return Response(reason + "\n", status_code=400, media_type=TEXT)


def _limit(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"limit must be a positive integer, not {value!r}")
    return int(value)


def _wants_sse(request: Request) -> bool:
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("sse", "json"):
            raise ValueError(f"format must be sse or json, not {chosen!r}")
        return chosen == "sse"
    return SSE in request.headers.get("accept", "")


async def tap(request: Request) -> Response:
    """---
    summary: Live request summaries (tap)
    description: >-
      Streams a summary of each request answered from now on that matches every filter given,
      until `limit` summaries were sent or the client goes. Server-sent events (`Accept:
      text/event-stream` or `format=sse`: each summary a `data:` line; a `dropped` event when
      the reader fell behind and the core dropped summaries) or JSON lines (`format=json`, the
      default: one summary object per line, and `{"dropped": N}` lines likewise). An idle stream
      sends a comment or an empty line every 15 seconds. Guarded as
      changes are: from this host, or with an admin token. At most 16 taps at once.
    parameters:
      - {name: route, in: query, schema: {type: string}, description: "a route's name"}
      - {name: service, in: query, schema: {type: string}, description: "a service's name"}
      - {name: authority, in: query, schema: {type: string}, description: "host, with or without port"}
      - {name: limit, in: query, schema: {type: integer, minimum: 1}, description: "stop after this many"}
      - {name: format, in: query, schema: {type: string, enum: [sse, json]}}
    responses:
      "200":
        description: >-
          The stream. Each summary has time, listener, client, method, path, protocol,
          authority, status, grpc_status, failed, duration_ms, ttfb_ms, bytes, route, service,
          endpoint, zone, identity (the caller's SPIFFE ID), trace_id and retried.
        content:
          text/event-stream: {schema: {type: string}}
          application/x-ndjson: {schema: {type: string}}
      "400":
        description: An unknown parameter or a bad value.
        content: {text/plain: {schema: {type: string}}}
      "503":
        description: The proxy is not running, or 16 taps are open.
        content: {text/plain: {schema: {type: string}}}
    """
    proxy: Proxy = request.app.state.proxy
    unknown = sorted(set(request.query_params) - {*FILTERS, "limit", "format"})
    if unknown:
        return _bad(f"unknown parameter {unknown[0]!r}: tap takes {', '.join(FILTERS)}, limit and format")
    try:
        limit = _limit(request.query_params.get("limit"))
        sse = _wants_sse(request)
    except ValueError as e:
        return _bad(str(e))
    if not proxy.running:
        return Response("the proxy is not running\n", status_code=503, media_type=TEXT)
    filters = {name: request.query_params.get(name) or None for name in FILTERS}
    try:
        feed = proxy.tap(**filters, capacity=QUEUE)
    except MeshcoreError as e:
        return Response(f"{e}\n", status_code=503, media_type=TEXT)
    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    if request.method == "HEAD":
        feed.close()
        return Response(status_code=200, media_type=SSE if sse else NDJSON, headers=headers)
    return StreamingResponse(
        _stream(proxy, feed, limit, sse), media_type=SSE if sse else NDJSON, headers=headers
    )


async def _stream(proxy: Proxy, feed: Any, limit: Optional[int], sse: bool) -> AsyncIterator[str]:
    sent, dropped, idle = 0, 0, 0.0
    try:
        if sse:
            yield ": tapping\n\n"  # the headers and a first byte now, not with the first request
        while proxy.running and not current_server_closing() and (limit is None or sent < limit):
            lines = await run_in_threadpool(feed.next, POLL_SECONDS)
            if limit is not None:
                lines = lines[: limit - sent]
            sent += len(lines)
            now_dropped = feed.dropped()
            out = [f"data: {line}\n\n" if sse else f"{line}\n" for line in lines]
            if now_dropped != dropped:
                dropped = now_dropped
                notice = json.dumps({"dropped": dropped})
                out.append(f"event: dropped\ndata: {notice}\n\n" if sse else f"{notice}\n")
            idle = 0.0 if out else idle + POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:  # so that a reader can tell a quiet proxy from a dead one
                out.append(": keep-alive\n\n" if sse else "\n")
                idle = 0.0
            if out:
                yield "".join(out)
    finally:
        feed.close()


TAP_ROUTES = [Route("/tap", tap, methods=["GET"])]
