"""What every admin request passes before its route: a change (any method but GET and HEAD)
is taken from this host, or from anywhere with an admin token; and a request body is read,
capped, before any handler runs."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..tokens import TokenFileError, match_token, read_token_file

# Most admin routes read no body; a small one is tolerated, as some clients send "{}" with a POST.
MAX_BODY_BYTES = 1024
# Routes that take a real body: a whole config.
BODY_LIMITS = {("PUT", "/config"): 1024 * 1024}
BODY_TIMEOUT_SECONDS = 10.0
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Reads that show what requests carry (paths, identities): guarded as changes are.
PRIVATE_READS = frozenset({"/tap"})
TEXT = "text/plain; charset=utf-8"


def is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    # A dual-stack "[::]" socket sees IPv4 callers as ::ffff:a.b.c.d.
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def refusal(status: int, text: str, headers: Optional[dict[str, str]] = None) -> Response:
    # The rest of the request is not read, so the connection cannot be used again.
    return Response(
        text, status_code=status, media_type=TEXT, headers={"connection": "close", **(headers or {})}
    )


LOOPBACK_ONLY = "admin changes are accepted from loopback only\n"
BEARER = {"www-authenticate": 'Bearer realm="meshcore admin"'}

Tokens = list[tuple[str, str]]


def authorize(
    method: str,
    client: Optional[str],
    authorization: Optional[str],
    tokens: Optional[Tokens],
    private_read: bool = False,
) -> tuple[Optional[str], Optional[Response]]:
    """Who asks for a change, or the refusal. Reads pass. A change is taken from loopback (as
    "loopback") or from anywhere with a valid `Authorization: Bearer TOKEN` (as the token's
    name). A token that is given is always checked: a wrong one is 401, even from loopback.
    `tokens` is None when no admin_token_file is configured. A private read (tap) is guarded
    as a change is."""
    if method in SAFE_METHODS and not private_read:
        return None, None
    if authorization is not None:
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None, refusal(401, "malformed Authorization header: expected 'Bearer TOKEN'\n", BEARER)
        if not tokens:
            return None, refusal(401, "no admin tokens are configured (admin_token_file)\n", BEARER)
        name = match_token(tokens, presented.strip())
        if name is None:
            return None, refusal(401, "invalid admin token\n", BEARER)
        return name, None
    if is_loopback(client):
        return "loopback", None
    if tokens is None:
        return None, refusal(403, LOOPBACK_ONLY)
    return None, refusal(401, "admin changes from another host need 'Authorization: Bearer TOKEN'\n", BEARER)


class AdminTokens:
    """The tokens of the running config's admin_token_file, read again when the file (or the
    setting) changes, so a rotated token applies without a reload. An unreadable file leaves
    no token valid (and says so once)."""

    def __init__(self, token_file: Callable[[], Optional[Path]]) -> None:
        self._token_file = token_file
        self._lock = threading.Lock()
        self._key: object = None
        self._tokens: Optional[Tokens] = None

    def __call__(self) -> Optional[Tokens]:
        path = self._token_file()
        if path is None:
            return None
        try:
            st = os.stat(path)
            key: object = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            key = (path, str(e))
        with self._lock:
            if key != self._key:
                self._key = key
                try:
                    self._tokens = read_token_file(path)
                except TokenFileError as e:
                    print(
                        f"meshcore: admin_token_file: {e}; no admin token is valid",
                        file=sys.stderr,
                        flush=True,
                    )
                    self._tokens = []
            return self._tokens


class ChangesAuthorized:
    """POST, PUT and DELETE change the proxy: only a caller on this host, or one with an admin
    token, may ask, whatever address the admin API is bound to; so may it read what requests
    carry (PRIVATE_READS). The caller's name is left in the request's state as `admin_who`."""

    def __init__(self, app: ASGIApp, tokens: Callable[[], Optional[Tokens]] = lambda: None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        private = scope["type"] == "http" and scope["path"] in PRIVATE_READS
        if scope["type"] == "http" and (scope["method"] not in SAFE_METHODS or private):
            client = scope.get("client")
            authorization = Headers(scope=scope).get("authorization")
            who, refused = authorize(
                scope["method"], client[0] if client else None, authorization, self.tokens(), private
            )
            if refused is not None:
                await refused(scope, receive, send)
                return
            scope.setdefault("state", {})["admin_who"] = who
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


class BoundedBody:
    """Reads the whole body (at most MAX_BODY_BYTES, or the route's BODY_LIMITS, within
    BODY_TIMEOUT_SECONDS) before the route runs, so a slow or endless body never holds a
    handler, and hands it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "0")  # h11 has checked it is digits
        limit = BODY_LIMITS.get((scope["method"], scope["path"]), MAX_BODY_BYTES)
        try:
            if int(declared) > limit:
                raise _TooLarge
            body = await asyncio.wait_for(_read_body(receive, limit), BODY_TIMEOUT_SECONDS)
        except _TooLarge:
            await refusal(413, f"request body over {limit} bytes\n")(scope, receive, send)
            return
        except asyncio.TimeoutError:
            await refusal(408, "request body not received in time\n")(scope, receive, send)
            return
        except _Gone:
            return
        scope["meshcore.body"] = body  # for the routes that read it, which run on worker threads
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, once the answer is sent
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
