"""uvicorn's server and HTTP/1.1 protocol with the bounds a network-facing service needs.

uvicorn bounds the size of a request head, the idle time between requests and the number of
connections. It does not bound the time a client takes over a request head (its keep-alive timer
stops at the first byte), and it leaves the TLS handshake to asyncio's 60 s default: a client that
stalls or trickles would hold its connection that long, or for ever. Both are bounded here.

This is the one module that relies on uvicorn's internals (Server.startup, main_loop, shutdown and
server_state; H11Protocol's callbacks and its conn, cycle, transport, loop and access_log), read in
uvicorn 0.30 to 0.55: pyproject.toml pins that range.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
from typing import Any, Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServerLimits


def uvicorn_config(app: Any, limits: ServerLimits) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        http="h11",  # BoundedServer serves it with BoundedProtocol
        ws="none",  # an Upgrade request stays plain HTTP
        interface="asgi3",
        lifespan="off",
        # Neither a logging config nor access_log=False, which would empty the process-wide
        # uvicorn.access logger: BoundedProtocol turns access logs off for its own connections.
        log_config=None,
        server_header=False,
        proxy_headers=False,  # clients connect directly: no X-Forwarded-For to believe
        limit_concurrency=limits.max_connections,
        backlog=limits.backlog,
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]  # seconds, float or int
        h11_max_incomplete_event_size=limits.max_head,
    )
    config.load()
    return config


class BoundedServer(uvicorn.Server):
    """uvicorn's server on sockets bound by the caller, with optional TLS under a handshake
    deadline, and a shutdown that ends within the grace."""

    def __init__(self, config: uvicorn.Config, limits: ServerLimits, tls: Optional[ssl.SSLContext]) -> None:
        super().__init__(config)
        self._limits = limits
        self._tls = tls
        self.serving = threading.Event()  # set once in the main loop, where should_exit leads to shutdown()

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        # uvicorn's own startup for given sockets, with our protocol and the TLS timeouts it does
        # not pass to asyncio. The lifespan is off, so there is no lifespan startup to run.
        assert sockets, "BackgroundServer always hands over its bound socket"
        loop = asyncio.get_running_loop()
        config, limits = self.config, self._limits

        def connection() -> asyncio.Protocol:
            return BoundedProtocol(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
                head_timeout=limits.head_timeout,
            )

        timeouts: dict[str, Any] = {}
        if self._tls is not None:
            timeouts["ssl_handshake_timeout"] = limits.tls_handshake_timeout
            if sys.version_info >= (3, 11):  # a client that never answers our close_notify
                timeouts["ssl_shutdown_timeout"] = limits.tls_handshake_timeout
        self.servers = [
            await loop.create_server(connection, sock=sock, ssl=self._tls, backlog=config.backlog, **timeouts)
            for sock in sockets
        ]
        self.started = True

    async def main_loop(self) -> None:
        self.serving.set()
        await super().main_loop()

    async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
        grace = self._limits.shutdown_grace
        try:
            await asyncio.wait_for(super().shutdown(sockets), grace)
        except asyncio.TimeoutError:
            pass
        # Connections still open are cut off. Their requests then end as the client went away,
        # rather than be cancelled, which uvicorn would log as an error with a traceback.
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        if self.server_state.tasks:
            await asyncio.wait(list(self.server_state.tasks), timeout=grace)


class BoundedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head, from the start of the
    connection (after the TLS handshake) or the end of the previous response: a client that misses
    it is cut off, however steadily it trickles. No access log."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn logs requests when uvicorn.access has handlers; its own switch (access_log=False)
        # empties that process-wide logger. This turns them off for this connection only.
        self.access_log = False
        self._head_timeout = head_timeout
        self._head_deadline: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._end_head_deadline()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # On close(), a connection with no request in progress goes at once: uvicorn would close it
        # gracefully and wait, for the whole grace, on a client slow to answer the TLS close_notify.
        if self.transport.is_closing() or self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def _watch_head(self) -> None:
        # While h11 waits for a request head, the deadline runs; data that leaves the head
        # unfinished does not extend it. Once the head is in (or refused), it stops.
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._end_head_deadline()
        elif self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self._head_timeout, self.transport.abort)

    def _end_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
