#!/usr/bin/env python3
"""Start-up time and memory of `meshcore run`.

    python bench/footprint.py [--idle-connections 1000]

Measures the time from launching `meshcore run` to its "ready" line and to the
listener accepting, the RSS when idle with a small config, and the RSS after
that many idle keep-alive client connections (each sent one request).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_load import free_port, rss_mb  # noqa: E402

from meshcore.backend import Backend  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle-connections", type=int, default=1000)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    backend = Backend("b", "zone-a")
    port = free_port()
    cfg = {
        "workers": 1,
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
        "routes": [{"listener": "web", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "protocol": "http1", "endpoints": [{"addr": backend.addr}]}],
    }
    conns: list[socket.socket] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.yaml"
        path.write_text(json.dumps(cfg))
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore.cli", "run", str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            while "ready" not in (proc.stdout.readline() or "ready"):
                pass
            ready_s = time.monotonic() - started
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            for _ in range(args.idle_connections):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(4096)
                conns.append(s)
            time.sleep(1.0)
            loaded = rss_mb(proc.pid)
        finally:
            for s in conns:
                s.close()
            proc.terminate()
            proc.wait(10)
            backend.stop()
    result = {
        "ready_s": round(ready_s, 3),
        "idle_rss_mb": round(idle, 1),
        f"rss_with_{args.idle_connections}_idle_connections_mb": round(loaded, 1),
        "added_mb": round(loaded - idle, 1),
    }
    report = (
        "\n".join(
            [
                "# meshcore footprint (`meshcore run`, small config, workers = 1)",
                "",
                "| measure | value |",
                "|---|---:|",
                f"| time from launch to ready | {ready_s:.2f} s |",
                f"| RSS idle | {idle:.1f} MB |",
                f"| RSS with {args.idle_connections} idle keep-alive connections | {loaded:.1f} MB |",
                f"| added by those connections | {loaded - idle:+.1f} MB |",
            ]
        )
        + "\n"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "footprint.md").write_text(report)
    print(report)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
