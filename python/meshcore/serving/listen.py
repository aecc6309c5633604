"""The listening socket, bound before the server's thread starts: a port in use is a BindError
at once, and with port 0 the caller learns the port the system chose."""

from __future__ import annotations

import socket

from ..errors import BindError


def listen(host: str, port: int, name: str, backlog: int) -> socket.socket:
    """A socket listening on host:port (an IPv4 or IPv6 address); `name` is the service's, for errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "[::]" takes IPv4 callers too
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError(f"{name} cannot bind {host_port(host, port)}: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
