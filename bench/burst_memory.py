"""Memory after connection bursts: does the proxy give back what a burst took?

Runs `meshcore run` (one worker) and opens BURSTS bursts of CONNS idle
HTTP/2 connections (the preface and SETTINGS, then nothing), closes each
burst, and reads the proxy's RSS from /proc after each. A sidecar with a
memory limit must come back near its idle footprint.

    python bench/burst_memory.py [--bursts 8] [--conns 8000]

The proxy's max_connections is raised above CONNS so that every connection
is held (with the default, 10,000, it is too).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_connections(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += "socket" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass  # closed while we looked
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--conns", type=int, default=8000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.conns + 1000)), hard))
    port, backend = free_port(), free_port()
    from meshcore.config import Listener

    # Builds from before max_connections existed held every connection anyway.
    has_limit = "max_connections" in Listener.model_fields
    limit = f"max_connections = {args.conns + 1000}" if has_limit else ""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mesh.toml"
        cfg.write_text(
            f"""workers = 1
[[listeners]]
name = "outbound"
bind = "127.0.0.1:{port}"
protocol = "http2"
{limit}
[[routes]]
listener = "outbound"
backends = [{{ service = "web" }}]
[[services]]
name = "web"
endpoints = [{{ addr = "127.0.0.1:{backend}" }}]
"""
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore.cli", "run", str(cfg)], stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "proxy did not start"
                    time.sleep(0.05)
            baseline_sockets = open_connections(proc.pid)
            idle = rss_mb(proc.pid)
            print(f"idle RSS {idle:.1f} MB")
            print("burst  RSS held MB  RSS after close MB")
            for n in range(args.bursts):
                socks = []
                for _ in range(args.conns):
                    s = socket.create_connection(("127.0.0.1", port))
                    s.sendall(PREFACE)
                    socks.append(s)
                # Held: wait until the proxy has answered the last one's preface.
                socks[-1].recv(100)
                held = rss_mb(proc.pid)
                for s in socks:
                    s.close()
                deadline = time.monotonic() + 30
                while open_connections(proc.pid) > baseline_sockets and time.monotonic() < deadline:
                    time.sleep(0.1)
                print(f"{n + 1:5}  {held:11.1f}  {rss_mb(proc.pid):18.1f}")
            # The proxy trims its allocator within 10 s of a burst going (meshcore.memory).
            time.sleep(12)
            final = rss_mb(proc.pid)
            print(f"RSS 12 s after the last burst {final:.1f} MB ({final / idle:.2f}x idle)")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
