"""Shared fixtures: real backends and real proxies on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

# Hosts in network namespaces, for any test (root; skipped elsewhere, failed under CI).
from netns_helpers import network  # noqa: F401

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


def wait_until(cond: Callable[[], object], timeout: float = 10.0, what: str = "the condition") -> None:
    """Waits for an event the test can observe (a counter, a closed socket, a
    log line), polling until `timeout`; fails the test if it never happens.
    The timeout is a deadline for a hang, not a measurement."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.01)


# Set to 1 on a machine that cannot install a tool: its tests then skip, loudly,
# instead of failing. ./scripts/test and CI leave it unset.
ALLOW_MISSING_TOOLS = "MESHCORE_ALLOW_MISSING_TOOLS"


def require_tool(name: str, package: str) -> str:
    """The path of an external tool a test drives. Some behaviour is only
    tested through such tools (nghttp for the two-step GOAWAY drain, promtool
    for the metrics format), so a missing one fails the test rather than
    quietly skipping it, unless MESHCORE_ALLOW_MISSING_TOOLS=1."""
    path = shutil.which(name)
    if path is not None:
        return path
    why = f"{name} is not installed (Debian package {package}; .ci/run installs it)"
    if os.environ.get(ALLOW_MISSING_TOOLS) == "1":
        pytest.skip(f"{why}; skipped because {ALLOW_MISSING_TOOLS}=1")
    pytest.fail(f"{why}; install it, or set {ALLOW_MISSING_TOOLS}=1 to skip the tests that need it")


def _tcp_queues(local: tuple[str, int], remote: tuple[str, int]) -> Optional[tuple[int, int]]:
    """(send queue, receive queue) in bytes of the IPv4 TCP socket with this
    local and remote address, from /proc/net/tcp; None if there is none."""

    def hex_addr(addr: tuple[str, int]) -> str:
        return socket.inet_aton(addr[0])[::-1].hex().upper() + f":{addr[1]:04X}"

    want = (hex_addr(local), hex_addr(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def wait_until_read_by_peer(sock: socket.socket, timeout: float = 10.0) -> None:
    """Waits until everything sent on `sock` has been read by the process at
    the other end (the peer's socket holds none of it unread). The proxy runs
    in this process, on this machine, so its side of the connection is visible
    in /proc/net/tcp. Used to make sure a request really arrives in pieces."""
    local, remote = sock.getsockname(), sock.getpeername()

    def consumed() -> bool:
        ours, theirs = _tcp_queues(local, remote), _tcp_queues(remote, local)
        return ours is not None and theirs is not None and ours[0] == 0 and theirs[1] == 0

    wait_until(consumed, timeout, f"the peer to read what was sent on {local}")


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


# The `meshcore` command, run with this interpreter.
MESHCORE = [sys.executable, "-m", "meshcore.cli"]


class OutputLines:
    """Collects a subprocess pipe's lines on a thread, so that a test can wait for
    one with a deadline (a blocking readline would wait past any deadline)."""

    def __init__(self, pipe) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:  # type: ignore[no-untyped-def]
        for line in pipe:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> str:
        """The first line matching `pattern` (a regex), once there is one."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if re.search(pattern, line)]
            return bool(found)

        wait_until(seen, timeout, f"a line matching {pattern!r} (got {self.lines})")
        return found[0]

    def text(self) -> str:
        """Everything, once the pipe has closed."""
        self._thread.join(10)
        return "".join(self.lines)


def refuses_connections(addr: tuple[str, int]) -> bool:
    """Whether nothing listens at `addr` any more (a stopped listener)."""
    try:
        socket.create_connection(addr, timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # queued on a listener as it closed: ask again
    return False


def closed_unanswered(addr: tuple[str, int], request: bytes) -> bool:
    """Sends `request` on a new connection: whether the peer closed it without a byte of answer
    (a reset because our bytes went unread counts as closed)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(request)
        try:
            return s.recv(4096) == b""
        except ConnectionResetError:
            return True


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
    """The sum of a metric's series in Prometheus text (with labels or without)."""
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


# None: close the connection without answering. Pieces (an iterable, such as a
# generator) are sent one after the other, so a script can wait between them.
Answer = Optional[Union[bytes, Iterable[bytes]]]


class ScriptedUpstream:
    """Reads request heads and replies with whatever `script(head, conn, n)`
    returns, where `conn` counts connections and `n` requests on this one.
    `closed` lists the connections (by number) that are over, in the order
    they ended: closed by the proxy, or by this upstream after answering."""

    def __init__(self, script: Callable[[bytes, int, int], Answer], close_after: bool = False):
        self.script = script
        self.close_after = close_after
        self.heads: list[bytes] = []
        self.connections = 0
        self.closed: list[int] = []
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
        try:
            self._exchange(conn, index)
        finally:
            conn.close()
            self.closed.append(index)

    def _exchange(self, conn: socket.socket, index: int) -> None:
        buf = b""
        n = 0
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
            for piece in [answer] if isinstance(answer, bytes) else answer:
                conn.sendall(piece)
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


# -- the README's and the docs' examples, run as written --

_namespaces = itertools.count()


class Namespace:
    """A network namespace with only loopback, holding the given addresses."""

    def __init__(self, addresses: list[str]):
        self.name = f"meshcore-docs-{os.getpid()}-{next(_namespaces)}"
        self.procs: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        for a in addresses:
            self.ip("addr", "add", f"{a}/32", "dev", "lo")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "ip", *args], check=True)

    def shell(self, line: str, cwd: Path) -> str:
        """Runs a README line; a background one (`&`) runs until the end of
        the test, and this returns its first line of output, once it has one."""
        command = line.split(" #", 1)[0].strip()
        background = command.endswith("&")
        argv = ["ip", "netns", "exec", self.name, "bash", "-c", command.rstrip("&").strip()]
        if not background:
            done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{command!r} failed: {done.stderr}"
            return done.stdout
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        # Serving: meshcore says it is ready, the example app names itself.
        return OutputLines(proc.stdout).wait_for(r"ready|^backend ", timeout=30)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def namespace():
    require_tool("ip", "iproute2")
    require_tool("curl", "curl")
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CI runs as root)")
    made: list[Namespace] = []

    def make(addresses: list[str]) -> Namespace:
        made.append(Namespace(addresses))
        return made[-1]

    yield make
    for ns in made:
        ns.close()
