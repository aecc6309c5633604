"""The admin routes. Each handler's docstring ends with its OpenAPI operation in YAML (after
"---"); openapi.py refuses a route without one. Handlers are plain functions: Starlette runs
them on worker threads, so a slow proxy call never stalls the event loop."""

from __future__ import annotations

import contextvars
import json
import threading
from pathlib import Path
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._core import __version__
from .config_routes import CONFIG_ROUTES
from .contract import Proxy
from .dashboard import DASHBOARD_ROUTES
from .guards import TEXT, AdminTokens, BoundedBody, ChangesAuthorized
from .openapi import describe
from .tap_route import TAP_ROUTES

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


def _text(status: int, body: str, media_type: str = TEXT, **extra: Any) -> Response:
    return Response(body, status_code=status, media_type=media_type, **extra)


def _json(status: int, value: Any) -> Response:
    return _text(status, json.dumps(value, indent=2) + "\n", JSON)


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy  # type: ignore[no-any-return]


def _running(proxy: Proxy) -> Response:
    return _text(200, "ready\n") if proxy.running else _text(503, "not ready\n")


def live(request: Request) -> Response:
    """---
    summary: Liveness probe; 200 while the proxy runs
    responses:
      "200":
        description: The proxy is running.
        content: {"text/plain; charset=utf-8": {schema: {type: string, example: "ready\\n"}}}
      "503":
        description: The proxy has stopped.
        content: {"text/plain; charset=utf-8": {schema: {type: string, example: "not ready\\n"}}}
    """
    return _running(_proxy(request))


def ready(request: Request) -> Response:
    """---
    summary: Readiness probe; 200 once the listeners are bound and serving
    responses:
      "200":
        description: The proxy is serving.
        content: {"text/plain; charset=utf-8": {schema: {type: string, example: "ready\\n"}}}
      "503":
        description: The proxy has stopped.
        content: {"text/plain; charset=utf-8": {schema: {type: string, example: "not ready\\n"}}}
    """
    return _running(_proxy(request))


def metrics(request: Request) -> Response:
    """---
    summary: Prometheus metrics of the proxy and its plugins
    responses:
      "200":
        description: Prometheus text exposition 0.0.4; empty once the proxy has stopped.
        content: {"text/plain; version=0.0.4; charset=utf-8": {schema: {type: string}}}
    """
    proxy = _proxy(request)
    return _text(200, proxy.metrics() if proxy.running else "", PROMETHEUS_TEXT)


def config(request: Request) -> Response:
    """---
    summary: The running config, defaults filled in
    responses:
      "200":
        description: The validated config, as JSON.
        content: {application/json: {schema: {type: object}}}
    """
    return _json(200, _proxy(request).config.model_dump(mode="json"))


def endpoints(request: Request) -> Response:
    """---
    summary: Each service's endpoints with their balancer state
    responses:
      "200":
        description: Per service, its balancer and endpoints (address, zone, EWMA, pending, requests).
        content:
          application/json:
            schema:
              type: object
              required: [services]
              properties: {services: {type: array, items: {type: object}}}
    """
    proxy = _proxy(request)
    return _json(200, proxy.endpoints() if proxy.running else {"services": []})


def identity(request: Request) -> Response:
    """---
    summary: The workload identity, its certificate and the trust anchors it accepts
    description: >-
      What `meshcore identity rotate-anchor` checks before each step: the anchors every proxy
      trusts, and the anchors each proxy's live certificate chains to.
    responses:
      "200":
        description: >-
          `spiffe_id`, `not_after` (unix seconds) and `chains_to` (SHA-256 of each trust anchor
          the certificate leads to) of the certificate in use, and `trust_anchors` (`subject`,
          `sha256`, `not_after`).
        content:
          application/json:
            schema:
              type: object
              required: [spiffe_id, not_after, chains_to, trust_anchors]
              properties:
                spiffe_id: {type: [string, "null"]}
                not_after: {type: [integer, "null"]}
                chains_to: {type: array, items: {type: string}}
                trust_anchors:
                  type: array
                  items:
                    type: object
                    required: [subject, sha256, not_after]
                    properties:
                      subject: {type: string}
                      sha256: {type: string}
                      not_after: {type: integer}
      "404":
        description: This proxy has no identity, or is not running.
        content:
          application/json:
            schema: {type: object, required: [error], properties: {error: {type: string}}}
    """
    proxy = _proxy(request)
    found = proxy.identity() if proxy.running else None
    if found is None:
        return _json(404, {"error": "no identity: the proxy has no [identity] or is not running"})
    return _json(200, found)


def stats(request: Request) -> Response:
    """---
    summary: Golden numbers per route and per service, and authorization decisions, since start
    description: >-
      Cumulative counts: a reader takes two samples and divides the difference by the time
      between them (`meshcore top` and the dashboard do). Latency buckets are per bucket, not
      cumulative, with bounds in `buckets_ms`; a response slower than the last bound is in no
      bucket. `cross_zone` counts responses from an endpoint outside the proxy's zone.
    responses:
      "200":
        description: The numbers; all empty once the proxy has stopped.
        content:
          application/json:
            schema:
              type: object
              required: [buckets_ms, routes, services, authorization]
              properties:
                buckets_ms: {type: array, items: {type: number}}
                routes: &by_name
                  type: object
                  additionalProperties:
                    type: object
                    required: [responses, failures, cross_zone, buckets]
                    properties:
                      responses: {type: integer}
                      failures: {type: integer}
                      cross_zone: {type: integer}
                      buckets: {type: array, items: {type: integer}}
                services: *by_name
                authorization:
                  type: array
                  items:
                    type: object
                    required: [listener, rule, decision, count]
                    properties:
                      listener: {type: string}
                      rule: {type: string}
                      decision: {type: string, enum: [allow, deny]}
                      count: {type: integer}
    """
    proxy = _proxy(request)
    if not proxy.running:
        return _json(200, {"buckets_ms": [], "routes": {}, "services": {}, "authorization": []})
    return _json(200, proxy.route_stats())


def plugins(request: Request) -> Response:
    """---
    summary: Loaded plugins and their last load error
    responses:
      "200":
        description: One entry per plugin.
        content:
          application/json:
            schema:
              type: object
              required: [plugins]
              properties: {plugins: {type: array, items: {type: object}}}
    """
    return _json(200, {"plugins": _proxy(request).plugins()})


def reload_plugins(request: Request) -> Response:
    """---
    summary: Re-import file and module plugins (loopback callers, or an admin token)
    description: A plugin that fails to load keeps its previous version running.
    responses:
      "200":
        description: Every plugin reloaded.
        content:
          application/json:
            schema: &reload
              type: object
              required: [reloaded, errors]
              properties:
                reloaded: {type: boolean}
                errors: {type: object, additionalProperties: {type: string}}
      "500":
        description: Some plugins failed to load; errors maps each to its error.
        content:
          application/json:
            schema: *reload
      "401":
        description: A wrong or missing admin token (a caller on another host needs one).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host and no admin_token_file is configured.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    errors = _proxy(request).reload_plugins()
    return _json(200 if not errors else 500, {"reloaded": not errors, "errors": errors})


def shutdown(request: Request) -> Response:
    """---
    summary: Stop the proxy, draining in-flight requests (loopback callers, or an admin token)
    responses:
      "202":
        description: The proxy is stopping.
        content: {"text/plain; charset=utf-8": {schema: {type: string, example: "shutting down\\n"}}}
      "401":
        description: A wrong or missing admin token (a caller on another host needs one).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host and no admin_token_file is configured.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    # stop() closes this server, which waits for this answer: it runs on a thread of its own,
    # started once the answer is sent.
    return _text(202, "shutting down\n", background=BackgroundTask(_stop_soon, _proxy(request)))


async def upgrade(request: Request) -> Response:
    """---
    summary: Replace this process with a new one that takes over its sockets (loopback callers only)
    description: >-
      Starts `COMMAND run CONFIG --upgrade` (COMMAND defaults to this interpreter's meshcore; it may
      name another installed version) detached, its output appended to upgrade.log in the state
      directory. The new process receives every listening socket, the admin API's included; once it
      is ready this one drains and exits. If it fails before it is ready, this one keeps serving.
      The optional JSON body names the command, as {"command": ["/path/to/meshcore"]}.
    responses:
      "200":
        description: The new process serves; this one is draining.
        content:
          application/json:
            schema: {type: object, required: [pid], properties: {pid: {type: integer}}}
      "400":
        description: 'The body is not {"command": [strings]}.'
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "409":
        description: >-
          An upgrade is under way, or this proxy was not started by `meshcore run` with a config
          file.
        content:
          application/json:
            schema: &failed {type: object, required: [error], properties: {error: {type: string}}}
      "500":
        description: The new process failed before it was ready (error says why); this one still serves.
        content:
          application/json:
            schema: *failed
    """
    upgrader = getattr(_proxy(request), "upgrader", None)
    body = await request.body()
    command = None
    if body.strip():
        try:
            command = json.loads(body).get("command")
        except (ValueError, AttributeError):
            return _text(400, 'the body must be a JSON object: {"command": ["/path/to/meshcore", ...]}\n')
        if command is not None and (
            not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)
        ):
            return _text(400, "command must be a non-empty list of non-empty strings\n")
    if upgrader is None:
        return _json(
            409,
            {
                "error": "this proxy was not started by `meshcore run` with a config file: "
                "it cannot start its replacement"
            },
        )
    status, answer = await run_in_threadpool(upgrader.upgrade, command)
    return _json(status, answer)


async def _stop_soon(proxy: Proxy) -> None:
    # In a fresh context: this thread is not one of the server's requests, so the close()
    # inside stop() waits for the server to end.
    stop = contextvars.Context().run
    threading.Thread(target=stop, args=(proxy.stop,), name="meshcore-admin-shutdown", daemon=True).start()


async def openapi(request: Request) -> Response:
    """---
    summary: This API's OpenAPI description
    responses:
      "200":
        description: An OpenAPI 3 document.
        content: {application/json: {schema: {type: object}}}
    """
    return _json(200, request.app.state.openapi)


ROUTES = [
    Route("/live", live, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/config", config, methods=["GET"]),
    *CONFIG_ROUTES,
    Route("/endpoints", endpoints, methods=["GET"]),
    Route("/identity", identity, methods=["GET"]),
    Route("/stats", stats, methods=["GET"]),
    *TAP_ROUTES,
    *DASHBOARD_ROUTES,
    Route("/plugins", plugins, methods=["GET"]),
    Route("/plugins/reload", reload_plugins, methods=["POST"]),
    Route("/shutdown", shutdown, methods=["POST"]),
    Route("/upgrade", upgrade, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]

_ERROR_TEXT = {404: "not found\n", 405: "method not allowed\n"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers: Optional[dict[str, str]] = dict(exc.headers) if exc.headers else None
    if headers and "Allow" in headers:
        # Starlette names the methods of the first route on the path (GET and PUT /config are
        # two) and joins a set: name them all, in a stable order.
        allowed = {
            method
            for route in request.app.routes
            if isinstance(route, Route) and route.methods and route.path_regex.match(request.url.path)
            for method in route.methods
        }
        headers["Allow"] = ", ".join(sorted(allowed))
    return _text(exc.status_code, _ERROR_TEXT.get(exc.status_code, f"{exc.detail}\n"), headers=headers)


def _token_file(proxy: Proxy) -> Optional[Path]:
    config = proxy.settings
    name = getattr(config, "admin_token_file", None)
    return None if name is None else Path(config.resolve_path(name))


def build_app(proxy: Proxy) -> Starlette:
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(ChangesAuthorized, tokens=AdminTokens(lambda: _token_file(proxy))),
            Middleware(BoundedBody),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.router.redirect_slashes = False  # "/live/" is a 404, not a redirect
    app.state.proxy = proxy
    app.state.openapi = describe(app.routes, title="meshcore admin API", version=__version__)
    return app
