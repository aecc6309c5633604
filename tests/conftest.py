"""Shared fixtures: real backends and real proxies on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from meshcore import Proxy
from meshcore.backend import Backend


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def make(name: str = "b", zone: str = "zone-a") -> Backend:
        b = Backend(name, zone)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def proxy() -> Iterator[Callable[[dict[str, Any]], Proxy]]:
    started: list[Proxy] = []

    def make(config: dict[str, Any]) -> Proxy:
        p = Proxy(config).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop(grace=0.5)


def one_service(
    endpoints: list[str],
    *,
    protocol: str = "http1",
    listener_protocol: str = "auto",
    balancer: str = "peak-ewma",
    route: dict[str, Any] | None = None,
    admin: bool = False,
) -> dict[str, Any]:
    """A proxy with one listener on a free port routing everything to `web`."""
    cfg: dict[str, Any] = {
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0", "protocol": listener_protocol}],
        "routes": [{"listener": "outbound", "backends": [{"service": "web"}], **(route or {})}],
        "services": [
            {
                "name": "web",
                "protocol": protocol,
                "balancer": balancer,
                "endpoints": [{"addr": a, "zone": "zone-a"} for a in endpoints],
            }
        ],
    }
    if admin:
        cfg["admin"] = "127.0.0.1:0"
    return cfg


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TcpEcho:
    """A TCP server that echoes bytes, optionally greeting first (server-speaks-first)."""

    def __init__(self, greeting: bytes = b""):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.greeting = greeting
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            if self.greeting:
                conn.sendall(self.greeting)
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tcp_echo() -> Iterator[Callable[..., TcpEcho]]:
    servers: list[TcpEcho] = []

    def make(greeting: bytes = b"") -> TcpEcho:
        s = TcpEcho(greeting)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def metric(text: str, name: str) -> float:
    """The sum of a metric's series in Prometheus text."""
    return sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


Answer = Optional[bytes]  # None: close the connection without answering


class ScriptedUpstream:
    """Reads request heads and replies with whatever `script(head, conn, n)`
    returns, where `conn` counts connections and `n` requests on this one."""

    def __init__(self, script: Callable[[bytes, int, int], Answer], close_after: bool = False):
        self.script = script
        self.close_after = close_after
        self.heads: list[bytes] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        buf = b""
        n = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                n += 1
                answer = self.script(head, index, n)
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after:
                    return

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()


@pytest.fixture
def upstream():
    made: list[ScriptedUpstream] = []

    def make(script: Callable[[bytes, int, int], Answer], **kw) -> ScriptedUpstream:
        u = ScriptedUpstream(script, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()
