"""BackgroundServer: an ASGI app served from a daemon thread with its own event loop until close()."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from contextvars import ContextVar
from typing import Any, Optional

from .bounded import BoundedServer, uvicorn_config
from .limits import ServerLimits
from .listen import listen

# Set while one of a server's requests runs (and so in its worker threads, which copy the context),
# so that close() called by a request can tell that it must not wait for the server, which waits
# for that request. Set by the app's wrapper: uvicorn may start each request in a fresh context.
_serving: ContextVar[Optional[BackgroundServer]] = ContextVar("meshcore_serving", default=None)


def current_server_closing() -> bool:
    """Whether the server running the current request is closing (see BackgroundServer.closing);
    False outside a request."""
    server = _serving.get()
    return server is not None and server.closing


class BackgroundServer:
    """Serves `app` on host:port (IPv4 or IPv6; "::" takes IPv4 callers too), over TLS if `tls` is
    given, from a daemon thread with its own event loop, until close().

    The socket is bound here, so a port in use raises BindError at once, and with port 0 `address`
    holds the port the system chose. `name` names the service in errors and its thread's name.
    `sock`, a socket already listening (one handed over by the process being replaced), is served
    instead of binding host:port; the server owns it from then on.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        name: str,
        limits: ServerLimits,
        tls: Optional[ssl.SSLContext] = None,
        sock: Optional[socket.socket] = None,
    ) -> None:
        self._socket = sock if sock is not None else listen(host, port, name, limits.backlog)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self._address = (str(bound_host), int(bound_port))
        self._failure: Optional[BaseException] = None
        try:
            self._server = BoundedServer(uvicorn_config(self._marking(app), limits), limits, tls)
            self._thread = threading.Thread(
                target=self._run, name=f"meshcore-{name.replace(' ', '-')}", daemon=True
            )
            self._thread.start()
            self._server.serving.wait()
            if self._failure is not None:
                raise self._failure
        except BaseException:
            self._socket.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """The bound address; a port 0 is resolved here."""
        return self._address

    @property
    def closing(self) -> bool:
        """Whether close() was called: a long response (a stream) should end now, while the
        grace lets it end cleanly."""
        return bool(self._server.should_exit)

    @property
    def listening_socket(self) -> socket.socket:
        """The socket served, for handing over to the process that replaces this one."""
        return self._socket

    def close(self) -> None:
        """Stops accepting, lets requests in flight finish (within the grace), cuts off the rest, and
        waits for the thread to end, unless called from one of this server's own requests: that
        request must end for the server to end, so it returns at once and the server ends after."""
        self._server.should_exit = True  # uvicorn's main loop looks at it every 0.1 s
        if _serving.get() is self or threading.current_thread() is self._thread:
            return
        self._thread.join()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as e:
            if self._server.serving.is_set():
                raise  # not the constructor's to report any more: the thread's excepthook does
            self._failure = e
        finally:
            self._socket.close()
            self._server.serving.set()

    def _marking(self, app: Any) -> Any:
        """`app`, run with _serving set to this server."""

        async def marked(scope: Any, receive: Any, send: Any) -> None:
            token = _serving.set(self)
            try:
                await app(scope, receive, send)
            finally:
                _serving.reset(token)

        return marked
