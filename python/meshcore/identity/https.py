"""An ASGI app served over HTTPS by uvicorn from a background thread, with the limits a
network-facing service needs.

uvicorn bounds the size of a request head, the idle time between requests and the number of
connections. It does not bound the time a client takes over a request head (its keep-alive timer
stops at the first byte), and it leaves the TLS handshake to asyncio's 60 s default: a client that
stalls or trickles would hold its connection that long, or for ever. Both are bounded here.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import BindError

__all__ = ["HttpsServer", "ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """What one client may take of the service: sizes in bytes, times in seconds."""

    max_body: int = 64 * 1024
    max_head: int = 16 * 1024  # the request line and headers together
    head_timeout: float = 10.0  # for the TLS handshake, then for each request head
    body_timeout: float = 10.0
    keep_alive: float = 5.0  # idle time allowed between two requests on a connection
    max_connections: int = 256  # once this many are open, requests are answered 503
    shutdown_grace: float = 1.0  # close() lets requests in flight finish for this long


class HttpsServer:
    """Serves `app` with TLS on host:port, from a daemon thread with its own event loop, until close().

    The socket is bound here, so a port in use raises BindError at once, and with port 0 `address`
    holds the port the system chose. `what` names the service in errors and the thread's name.
    """

    def __init__(
        self, app: Any, host: str, port: int, tls: ssl.SSLContext, limits: ServerLimits, what: str
    ) -> None:
        self._socket = _listen(host, port, what)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._failure: Optional[BaseException] = None
        try:
            self._server = _Server(_uvicorn_config(app, limits), tls, limits)
            self._thread = threading.Thread(
                target=self._run, name=f"meshcore-{what.replace(' ', '-')}", daemon=True
            )
            self._thread.start()
            self._server.ready.wait()
            if self._failure is not None:
                raise self._failure
        except BaseException:
            self._socket.close()
            raise

    def close(self) -> None:
        """Stops accepting, lets requests in flight finish (within the grace), and joins the thread."""
        self._server.should_exit = True  # uvicorn's main loop looks at it every 0.1 s
        self._thread.join()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as e:  # noqa: BLE001 - handed to __init__ if it happens on startup
            self._failure = e
        finally:
            self._server.ready.set()


def _uvicorn_config(app: Any, limits: ServerLimits) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        http=functools.partial(_HeadDeadlineProtocol, head_timeout=limits.head_timeout),
        ws="none",  # an Upgrade request stays plain HTTP
        interface="asgi3",
        loop="asyncio",
        lifespan="off",
        log_config=None,  # leave the host program's logging as it is
        server_header=False,
        proxy_headers=False,  # clients connect directly: no X-Forwarded-For to believe
        workers=1,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]  # seconds, float or int
        h11_max_incomplete_event_size=limits.max_head,
    )
    config.load()
    return config


class _Server(uvicorn.Server):
    """uvicorn's server on sockets bound by the caller, with a deadline on the TLS handshake and a
    shutdown that ends within the grace."""

    def __init__(self, config: uvicorn.Config, tls: ssl.SSLContext, limits: ServerLimits) -> None:
        super().__init__(config)
        self._tls = tls
        self._limits = limits
        self.ready = threading.Event()  # set once serving, or once startup failed

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        # uvicorn's own startup for given sockets, plus the handshake (and TLS shutdown) timeouts
        # it does not pass to asyncio.
        assert sockets, "HttpsServer always hands over its bound socket"
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        timeouts: dict[str, float] = {"ssl_handshake_timeout": self._limits.head_timeout}
        if sys.version_info >= (3, 11):  # a client that never answers our close_notify
            timeouts["ssl_shutdown_timeout"] = self._limits.head_timeout
        self.servers = [
            await loop.create_server(protocol, sock=sock, ssl=self._tls, backlog=config.backlog, **timeouts)
            for sock in sockets
        ]
        self.started = True
        self.ready.set()

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


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head, from the end of the TLS
    handshake or of the previous response; a client that misses it is disconnected."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = head_timeout
        self._head_deadline: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or was refused)
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._expect_head()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # On close(), a connection with no request in progress goes at once: uvicorn would close it
        # gracefully and wait, for the whole grace, on a client slow to answer the TLS close_notify.
        if self.transport.is_closing() or self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def _expect_head(self) -> None:
        self._head_arrived()
        self._head_deadline = self.loop.call_later(self._head_timeout, self.transport.abort)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


def _listen(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As http.server did: a restarted service need not wait for the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise BindError(f"{what} cannot bind {host}:{port}: {e.strerror or e}") from None
    return sock
