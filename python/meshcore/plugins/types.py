"""The types plugin hooks see: a request, its headers, the endpoint chosen for it and a response.

The proxy reads back only what a hook changed (`Request._take_changes`, `Headers.dirty`), so a
hook that only looks costs no copy on the way back to Rust.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional, Union

__all__ = ["Headers", "Request", "Response", "Endpoint"]


class Headers:
    """Case-insensitive, multi-valued headers that keep their order."""

    __slots__ = ("_items", "dirty")

    def __init__(self, items: Union[None, list[tuple[str, str]], dict[str, str]] = None):
        if isinstance(items, dict):
            items = list(items.items())
        self._items: list[tuple[str, str]] = list(items or [])
        self.dirty = False

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.remove(name)
        self._items.append((name.lower(), str(value)))
        self.dirty = True

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), str(value)))
        self.dirty = True

    def remove(self, name: str) -> None:
        lname = name.lower()
        kept = [(k, v) for k, v in self._items if k.lower() != lname]
        if len(kept) != len(self._items):
            self._items = kept
            self.dirty = True

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.remove(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.lower() for k, _ in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Request:
    """What hooks see of a request. Changes to headers, path and service are applied."""

    __slots__ = (
        "method",
        "_path",
        "authority",
        "headers",
        "peer",
        "identity",
        "route",
        "_service",
        "ctx",
        "_changed",
    )

    def __init__(
        self,
        method: str,
        path: str,
        authority: str,
        headers: Headers,
        peer: str,
        identity: Optional[str],
        route: str,
        service: Optional[str],
    ):
        self.method = method
        self._path = path
        self.authority = authority
        self.headers = headers
        self.peer = peer
        self.identity = identity
        self.route = route
        self._service = service
        self.ctx: dict[str, Any] = {}
        self._changed = False

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        self._path = value
        self._changed = True

    @property
    def service(self) -> Optional[str]:
        return self._service

    @service.setter
    def service(self, value: str) -> None:
        self._service = value
        self._changed = True

    def _take_changes(self) -> Optional[tuple[str, str, Optional[list[tuple[str, str]]], Optional[str]]]:
        """The ("request", path, headers, service) change for Rust, or None if nothing changed
        since the last call; headers is None when only the path or service changed."""
        if not (self._changed or self.headers.dirty):
            return None
        headers = self.headers.items() if self.headers.dirty else None
        self._changed = self.headers.dirty = False
        return ("request", self._path, headers, self._service)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.authority}{self._path} route={self.route}>"


class Response:
    """A response: returned from ``on_request`` to answer directly, or seen by ``on_response``."""

    __slots__ = ("status", "headers", "body", "_original_status")

    def __init__(
        self,
        status: int = 200,
        headers: Union[None, dict[str, str], list[tuple[str, str]], Headers] = None,
        body: Union[bytes, str] = b"",
    ):
        self.status = int(status)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self._original_status = self.status

    def _changes(self) -> Optional[tuple[str, int, list[tuple[str, str]]]]:
        """The ("response", status, headers) change for Rust, or None if hooks changed nothing."""
        if self.status == self._original_status and not self.headers.dirty:
            return None
        return ("response", self.status, self.headers.items())

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class Endpoint:
    """The upstream endpoint the balancer chose, as ``on_upstream_request`` sees it."""

    __slots__ = ("addr", "zone")

    def __init__(self, addr: str, zone: str):
        self.addr = addr
        self.zone = zone

    def __repr__(self) -> str:
        return f"<Endpoint {self.addr} zone={self.zone}>"
