"""What every admin request passes before its route: a change (any method but GET and HEAD)
is taken from this host only, and a request body is read, capped, before any handler runs."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Optional

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No admin route reads a body; a small one is tolerated, as some clients send "{}" with a POST.
MAX_BODY_BYTES = 1024
BODY_TIMEOUT_SECONDS = 10.0
SAFE_METHODS = frozenset({"GET", "HEAD"})
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


def refusal(status: int, text: str) -> Response:
    # The rest of the request is not read, so the connection cannot be used again.
    return Response(text, status_code=status, media_type=TEXT, headers={"connection": "close"})


class ChangesFromLoopbackOnly:
    """POST /shutdown and /plugins/reload change the proxy: only a caller on this host may ask,
    whatever address the admin API is bound to."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                forbidden = refusal(403, "admin changes are accepted from loopback only\n")
                await forbidden(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


class BoundedBody:
    """Reads the whole body (at most MAX_BODY_BYTES, within BODY_TIMEOUT_SECONDS) before the
    route runs, so a slow or endless body never holds a handler, and hands it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "0")  # h11 has checked it is digits
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise _TooLarge
            body = await asyncio.wait_for(_read_body(receive), BODY_TIMEOUT_SECONDS)
        except _TooLarge:
            await refusal(413, f"request body over {MAX_BODY_BYTES} bytes\n")(scope, receive, send)
            return
        except asyncio.TimeoutError:
            await refusal(408, "request body not received in time\n")(scope, receive, send)
            return
        except _Gone:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, once the answer is sent
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
