"""Serves the admin app with uvicorn on a background thread with its own event loop. The
socket is bound here, before the thread starts, so a port in use is a BindError from the
constructor, as it is for the proxy's own listeners."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Optional

import uvicorn

from ..errors import BindError
from .api import build_app
from .contract import Proxy

MAX_CONNECTIONS = 128  # open at once, requests included; past it uvicorn answers 503 and closes
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this long
CLOSE_GRACE_SECONDS = 1  # on close, requests still running get this long to finish
MAX_HEAD_BYTES = 16 * 1024
BACKLOG = 128

# Set in the server's own context, so that a handler (even on a worker thread) can tell that
# closing the server it runs on must not wait for it.
_serving: ContextVar[Optional[AdminServer]] = ContextVar("meshcore_admin_serving", default=None)


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone: the proxy's owner handles them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # the name in uvicorn before 0.29
        pass


class AdminServer:
    """The admin API on `bind` ("host:port", "[v6]:port"), serving until `close()`."""

    def __init__(self, proxy: Proxy, bind: str):
        self._socket = _listen(bind)
        host, port = self._socket.getsockname()[:2]
        self._address = (str(host), int(port))
        try:
            config = uvicorn.Config(
                build_app(proxy),
                http="h11",
                ws="none",
                lifespan="off",
                interface="asgi3",
                log_config=None,  # leave the process's logging as it is
                access_log=False,
                proxy_headers=False,  # the loopback check must see the real peer
                server_header=False,
                limit_concurrency=MAX_CONNECTIONS,
                backlog=BACKLOG,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                timeout_graceful_shutdown=CLOSE_GRACE_SECONDS,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            )
            config.load()
        except BaseException:
            self._socket.close()
            raise
        self._server = _ThreadServer(config)
        self._thread = threading.Thread(target=self._run, name="meshcore-admin", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address; a port 0 in the config is resolved here."""
        return self._address

    def close(self) -> None:
        """Stops serving and, unless called from one of this server's own requests, waits for
        its thread to end."""
        self._server.should_exit = True
        if _serving.get() is not self and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self._socket.close()

    async def _serve(self) -> None:
        _serving.set(self)
        await self._server.serve(sockets=[self._socket])


def _listen(bind: str) -> socket.socket:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # the socket's family follows the address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "[::]" takes IPv4 callers too
        sock.bind((host, int(port)))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise BindError(f"admin cannot bind {bind}: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock
