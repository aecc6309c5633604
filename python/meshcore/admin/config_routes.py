"""The /config lifecycle routes (#17): status, history, a new config, reload and rollback. They
reach the proxy's Lifecycle (`proxy.lifecycle`, set by `meshcore run`); a proxy without one
answers 503. A refused config is a 400 whose text is what `meshcore check` prints."""

from __future__ import annotations

import json
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .guards import TEXT

__all__ = ["CONFIG_ROUTES"]

JSON = "application/json"
# Content-Type -> config format; anything else is refused with 415.
FORMATS = {
    "": "toml",
    "application/toml": "toml",
    "text/plain": "toml",
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
}
NO_LIFECYCLE = "config changes are not managed by this proxy (no lifecycle: start it with `meshcore run`)\n"


def _text(status: int, body: str) -> Response:
    return Response(body, status_code=status, media_type=TEXT)


def _json(status: int, value: Any) -> Response:
    return Response(json.dumps(value, indent=2) + "\n", status_code=status, media_type=JSON)


def _lifecycle(request: Request) -> Any:
    return getattr(request.app.state.proxy, "lifecycle", None)


def _who(request: Request) -> str:
    return getattr(request.state, "admin_who", None) or "loopback"


def _outcome(outcome: Any) -> Response:
    if outcome.result == "refused":
        return _text(400, f"{outcome.error}\n")
    if outcome.result == "nothing":
        return _text(409, f"{outcome.error}\n")
    return _json(200, {"result": outcome.result, "version": outcome.version})


def config_status(request: Request) -> Response:
    """---
    summary: The running config version, whether the file matches it, and the last reload
    responses:
      "200":
        description: >-
          version, hash, applied_at, source and who of the running version; file (path, hash,
          matches, error); last_reload (result, version, error, source, who, at); reloads (count
          per result since start); watch; verify (the running verification, if any).
        content: {application/json: {schema: {type: object, required: [version, last_reload]}}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    return _json(200, lifecycle.status())


def config_history(request: Request) -> Response:
    """---
    summary: Every kept config version, newest first
    responses:
      "200":
        description: >-
          current is the running version; each version has version, hash, applied_at, source
          (start, file, signal, watch, api, rollback), who, format, bad (why, if marked) and
          rollback_of.
        content:
          application/json:
            schema:
              type: object
              required: [current, versions]
              properties:
                current: {type: [integer, "null"]}
                versions: {type: array, items: {type: object}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    versions = lifecycle.history()
    current = next((v["version"] for v in versions if v["current"]), None)
    return _json(200, {"current": current, "versions": versions})


def config_version(request: Request) -> Response:
    """---
    summary: One config version with its stored text and its validated config
    parameters:
      - {name: version, in: path, required: true, schema: {type: integer, minimum: 1}}
    responses:
      "200":
        description: >-
          As in /config/history, plus text (as applied), format, and config (validated,
          defaults filled; null if this meshcore no longer reads it).
        content: {application/json: {schema: {type: object, required: [version, text, config]}}}
      "404":
        description: No such version (never recorded, or pruned).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    number = request.path_params["version"]
    version = lifecycle.version(number)
    if version is None:
        return _text(404, f"no version {number} in the history\n")
    return _json(200, version)


def put_config(request: Request) -> Response:
    """---
    summary: Apply a new config (loopback callers, or an admin token)
    description: >-
      The body is the whole config: TOML by default, JSON or YAML by Content-Type, at most 1 MiB.
      It is validated as `meshcore check` does, applied, and kept in the history (source "api");
      the config file is not written.
    requestBody:
      content:
        application/toml: {schema: {type: string}}
        application/json: {schema: {type: object}}
        application/yaml: {schema: {type: string}}
    responses:
      "200":
        description: Applied as a new version, or unchanged (the running config).
        content:
          application/json:
            schema:
              type: object
              required: [result, version]
              properties:
                result: {type: string, enum: [applied, unchanged]}
                version: {type: integer}
      "400":
        description: Refused; nothing changed. The text is what `meshcore check` prints.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "401":
        description: A wrong or missing admin token (a caller on another host needs one).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host and no admin_token_file is configured.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "413":
        description: The body is over 1 MiB.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "415":
        description: A Content-Type other than TOML, JSON or YAML.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = FORMATS.get(media_type)
    if fmt is None:
        valid = ", ".join(t for t in FORMATS if t)
        return _text(415, f"unsupported Content-Type {media_type!r} (valid: {valid})\n")
    body = _body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return _text(400, f"ConfigError: PUT /config: not UTF-8 text (byte {e.start})\n")
    return _outcome(lifecycle.reload(source="api", who=_who(request), text=text, fmt=fmt))


def reload_config(request: Request) -> Response:
    """---
    summary: Re-read the config file and apply it (loopback callers, or an admin token)
    responses:
      "200":
        description: Applied as a new version, or unchanged (the file holds the running config).
        content:
          application/json:
            schema:
              type: object
              required: [result, version]
              properties:
                result: {type: string, enum: [applied, unchanged]}
                version: {type: integer}
      "400":
        description: Refused; nothing changed. The text is what `meshcore check` prints.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "401":
        description: A wrong or missing admin token (a caller on another host needs one).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host and no admin_token_file is configured.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    return _outcome(lifecycle.reload(source="file", who=_who(request)))


def rollback_config(request: Request) -> Response:
    """---
    summary: Roll back to an earlier version (loopback callers, or an admin token)
    description: >-
      Optional JSON body {"version": N}; without it, the newest earlier version that is not
      marked bad and differs from the running config. The restored config is a new version
      (source "rollback", rollback_of N).
    requestBody:
      required: false
      content:
        application/json:
          schema: {type: object, properties: {version: {type: integer}}}
    responses:
      "200":
        description: Applied as a new version, or unchanged.
        content:
          application/json:
            schema:
              type: object
              required: [result, version]
              properties:
                result: {type: string, enum: [applied, unchanged]}
                version: {type: integer}
      "400":
        description: A malformed body, or the version's config is refused now (e.g. a file it names is gone).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "401":
        description: A wrong or missing admin token (a caller on another host needs one).
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "403":
        description: The caller is not on this host and no admin_token_file is configured.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "404":
        description: No such version in the history.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "409":
        description: Nothing to roll back to.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
      "503":
        description: No lifecycle manages this proxy's config.
        content: {"text/plain; charset=utf-8": {schema: {type: string}}}
    """
    lifecycle = _lifecycle(request)
    if lifecycle is None:
        return _text(503, NO_LIFECYCLE)
    version, problem = _rollback_version(_body(request))
    if problem is not None:
        return _text(400, problem)
    if version is not None and lifecycle.version(version) is None:
        return _text(404, f"no version {version} in the history\n")
    return _outcome(lifecycle.rollback(version, who=_who(request)))


def _rollback_version(body: bytes) -> tuple[Optional[int], Optional[str]]:
    if not body.strip():
        return None, None
    try:
        value = json.loads(body)
    except ValueError as e:
        return None, f'the body must be JSON such as {{"version": 3}}: {e}\n'
    if not isinstance(value, dict) or set(value) - {"version"}:
        return None, 'the body must be {"version": N} or empty\n'
    version = value.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        return None, f"version must be a positive integer, got {version!r}\n"
    return version, None


def _body(request: Request) -> bytes:
    # guards.BoundedBody has read the whole body before the route runs and replays it.
    body: bytes = request.scope.get("meshcore.body", b"")
    return body


CONFIG_ROUTES = [
    Route("/config", put_config, methods=["PUT"]),
    Route("/config/status", config_status, methods=["GET"]),
    Route("/config/history", config_history, methods=["GET"]),
    Route("/config/history/{version:int}", config_version, methods=["GET"]),
    Route("/config/reload", reload_config, methods=["POST"]),
    Route("/config/rollback", rollback_config, methods=["POST"]),
]
