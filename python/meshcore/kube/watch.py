"""List then watch one collection of the Kubernetes API (the protocol client-go's reflector speaks).

`list_all` pages through a collection and answers its items with the collection's
resourceVersion; `watch` streams the changes after a resourceVersion, one JSON event a line,
with bookmarks asked for (`allowWatchBookmarks`), so a quiet collection's version still moves on
and a reconnect does not start from a version the server has long forgotten. An expired version
(`410 Gone`, as an HTTP status or as an ERROR event in the stream) is raised as `Gone`: the caller
lists again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["ApiFailure", "Gone", "Listed", "list_all", "watch"]

Object = dict[str, Any]


class ApiFailure(Exception):
    """The API server refused or broke a request (an HTTP error, an ERROR event, bad JSON)."""


class Gone(ApiFailure):
    """The resourceVersion asked for has expired (410): list again."""


@dataclass(frozen=True)
class Listed:
    items: list[Object]
    resource_version: str


def _status_failure(code: int, status: Any, what: str) -> ApiFailure:
    """An error from a Status object (or whatever body came with the error code)."""
    if isinstance(status, dict):
        reason = status.get("message") or status.get("reason") or "no message"
        code = status.get("code") or code
    else:
        reason = str(status)[:200] or "no body"
    error = Gone if code == 410 else ApiFailure
    return error(f"{what}: {code} {reason}")


def _raise_for_status(response: Any, what: str) -> None:
    if response.status_code < 300:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise _status_failure(response.status_code, body, what)


async def list_all(client: Any, path: str, page: int = 500) -> Listed:
    """Every item of the collection at `path`, in pages of `page`, with its resourceVersion."""
    items: list[Object] = []
    token: Optional[str] = None
    while True:
        params = {"limit": str(page), **({"continue": token} if token else {})}
        response = await client.get(path, params=params)
        _raise_for_status(response, f"list {path}")
        try:
            body = response.json()
        except ValueError as e:
            raise ApiFailure(f"list {path}: not JSON: {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
            raise ApiFailure(f"list {path}: not a list object (no items)")
        items.extend(body.get("items") or [])
        metadata = body.get("metadata") or {}
        token = metadata.get("continue")
        if not token:
            return Listed(items, str(metadata.get("resourceVersion") or ""))


async def watch(
    client: Any,
    path: str,
    resource_version: str,
    timeout_seconds: int = 300,
    on_open: Optional[Callable[[], None]] = None,
) -> AsyncIterator[tuple[str, Object]]:
    """(type, object) for each event after `resource_version`: ADDED, MODIFIED, DELETED, BOOKMARK.
    Ends when the server closes the stream (its `timeoutSeconds`); raises `Gone` on 410.
    `on_open` is called once the server has accepted the watch."""
    params = {
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    what = f"watch {path} from resourceVersion {resource_version}"
    async with client.stream("GET", path, params=params) as response:
        if response.status_code >= 300:
            await response.aread()
            _raise_for_status(response, what)
        if on_open is not None:
            on_open()
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
            except (ValueError, KeyError, TypeError) as e:
                raise ApiFailure(f"{what}: not a watch event ({e}): {line[:200]!r}") from None
            if kind == "ERROR":
                raise _status_failure(500, obj, what)
            if not isinstance(obj, dict):
                raise ApiFailure(f"{what}: {kind} event without an object")
            yield kind, obj
