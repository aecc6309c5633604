"""What one client may take of a service, with the defaults of a small API on the network."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional


@dataclass(frozen=True)
class ServerLimits:
    """Sizes in bytes, times in seconds. The server enforces all of them but the body's two, which
    the app applies as it reads a body, since it knows how to refuse one. The identity service runs
    on the defaults; the admin API narrows them (meshcore.admin.server.LIMITS)."""

    max_body: int = 64 * 1024
    max_head: int = 16 * 1024  # the request line and headers together
    head_timeout: float = 10.0  # for each request head, from the connection's start or the last response
    handshake_timeout: Optional[float] = None  # for the TLS handshake; None: as head_timeout
    body_timeout: float = 10.0
    keep_alive: float = 5.0  # idle time allowed between two requests on a connection
    max_connections: int = 256  # once this many are open, requests are answered 503
    shutdown_grace: float = 1.0  # close() lets requests in flight finish for this long
    backlog: int = 2048  # connections the kernel holds until they are accepted

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and not value > 0:
                raise ValueError(f"ServerLimits.{field.name} must be positive, got {value!r}")

    @property
    def tls_handshake_timeout(self) -> float:
        return self.head_timeout if self.handshake_timeout is None else self.handshake_timeout
