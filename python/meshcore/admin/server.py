"""The admin API's server: meshcore.serving, in plain HTTP, with the admin's limits. The socket
is bound before the server's thread starts, so a port in use is a BindError from the constructor,
as it is for the proxy's own listeners."""

from __future__ import annotations

import socket
from typing import Optional

from ..serving import BackgroundServer, ServerLimits
from .api import build_app
from .contract import Proxy
from .guards import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES

LIMITS = ServerLimits(
    max_body=MAX_BODY_BYTES,  # applied by guards.BoundedBody, as is the body's deadline
    body_timeout=BODY_TIMEOUT_SECONDS,
    max_head=16 * 1024,
    head_timeout=10.0,
    keep_alive=5.0,
    max_connections=128,  # open at once, requests included; past it requests are answered 503
    shutdown_grace=1.0,
    backlog=128,
)


class AdminServer(BackgroundServer):
    """The admin API on `bind` ("host:port", "[v6]:port"), serving until `close()`; on `sock`
    instead, when given: a listening socket handed over by the process this one replaces."""

    def __init__(
        self, proxy: Proxy, bind: str, *, limits: ServerLimits = LIMITS, sock: Optional[socket.socket] = None
    ) -> None:
        host, _, port = bind.rpartition(":")
        super().__init__(
            build_app(proxy), host.strip("[]"), int(port), name="admin", limits=limits, sock=sock
        )
