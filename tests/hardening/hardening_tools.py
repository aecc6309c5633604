"""What the hardening tests share: raw HTTP/1.1 exchanges, a proxy guarding
a recording upstream, and reading the proxy's own CPU and memory."""

from __future__ import annotations

import os
import re
import resource
import socket
import threading
import time
from typing import Any

import httpx


def exchange(addr: tuple[str, int], raw: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw request bytes and reads until the proxy closes or goes quiet
    after a whole response."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(raw)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
            if _complete(got):
                break
        return got


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    return m is not None and len(body) >= int(m.group(1))


def status_of(reply: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    assert m, f"no status line in {reply[:200]!r}"
    return int(m.group(1))


class Recorder:
    """An HTTP/1.1 upstream that records each request line it gets and answers 200."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
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
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.lines.append(line)
                body = f"served {line}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    def paths(self) -> list[str]:
        return [line.split(" ")[1] for line in self.lines]

    def close(self) -> None:
        self.sock.close()


def guarded_config(upstream: str, *, protocol: str = "auto", **listener: Any) -> dict[str, Any]:
    """An inbound listener that denies by default and allows only /public."""
    return {
        "listeners": [
            {
                "name": "inbound",
                "bind": "127.0.0.1:0",
                "direction": "inbound",
                "protocol": protocol,
                **listener,
            }
        ],
        "routes": [{"listener": "inbound", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "protocol": "http1", "endpoints": [{"addr": upstream}]}],
        "policy": {
            "default": "deny",
            "rules": [{"name": "public", "listener": "inbound", "path_prefix": "/public"}],
        },
    }


def served_normally(url: str) -> bool:
    """A normal client's request succeeds (used while an attack runs)."""
    try:
        return httpx.get(url, timeout=5).status_code < 500
    except httpx.HTTPError:
        return False


def proxy_usage() -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of this process, which runs the proxy's threads."""
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{os.getpid()}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def worker_cpu() -> float:
    """CPU seconds used so far by the proxy's worker threads in this process
    (the test's own client threads are not counted)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue  # the thread ended while we looked
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name.startswith("meshcore-worke"):  # comm is cut at 15 characters
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def connection_budget(wanted: int) -> int:
    """Raises this process's descriptor limit for `wanted` client connections
    (each costs two descriptors here: the client's and the proxy's), and
    returns how many fit under the hard limit (at least half are required)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted + 500
    if soft < need:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
        )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = min(wanted, (soft - 500) // 2)
    assert fits >= wanted // 2, f"descriptor limit {soft} is too low for this test"
    return fits


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))
