"""The identity service's HTTPS server: meshcore.serving with TLS, under ServerLimits, whose
defaults are the identity service's (64 KiB bodies, 16 KiB heads, 10 s for the TLS handshake,
each head and each body, 5 s keep-alive, 256 connections, 1 s to finish on close)."""

from __future__ import annotations

import ssl
from typing import Any

from ..serving import BackgroundServer, ServerLimits

__all__ = ["HttpsServer", "ServerLimits"]


class HttpsServer(BackgroundServer):
    """Serves `app` with TLS on host:port until close(); `what` names the service in errors and
    in its thread's name."""

    def __init__(
        self, app: Any, host: str, port: int, tls: ssl.SSLContext, limits: ServerLimits, what: str
    ) -> None:
        super().__init__(app, host, port, name=what, limits=limits, tls=tls)
