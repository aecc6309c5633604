#!/usr/bin/env python3
"""Throughput and latency through meshcore against a direct connection.

    python bench/proxy_load.py [--duration 10] [--connections 50] [--rounds 2]

The backend is nginx (one worker) answering "ok" on an HTTP/1.1 port and an
h2c (prior knowledge) port. meshcore runs as `meshcore run` with `workers = 1`.
HTTP/1.1 load comes from wrk, HTTP/2 load from h2load. Each scenario runs
direct and through the proxy in alternating rounds after a warm-up; the
median of each measure is reported, with the proxy's CPU microseconds per request read
from /proc/PID/stat. Pinning (2-core machine): the proxy on CPU 1; nginx and
the load generator on CPU 0. Needs: nginx, wrk, h2load (bench/setup).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and os.cpu_count() >= 2 else argv


def start_nginx(tmp: Path, h1: int, h2: int) -> subprocess.Popen:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp};
    server {{ listen 127.0.0.1:{h1}; location / {{ return 200 "ok\\n"; }} }}
    server {{ listen 127.0.0.1:{h2} http2; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    proc = subprocess.Popen(pinned(0, ["nginx", "-c", str(conf), "-p", str(tmp)]))
    wait_port(h1)
    wait_port(h2)
    return proc


def start_meshcore(tmp: Path, h1_backend: int, h2_backend: int) -> tuple[subprocess.Popen, int, int]:
    p1, p2 = free_port(), free_port()
    cfg = {
        "workers": 1,
        "listeners": [
            {"name": "h1", "bind": f"127.0.0.1:{p1}"},
            {"name": "h2", "bind": f"127.0.0.1:{p2}"},
        ],
        "routes": [
            {"listener": "h1", "backends": [{"service": "web-h1"}]},
            {"listener": "h2", "backends": [{"service": "web-h2"}]},
        ],
        "services": [
            {"name": "web-h1", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{h1_backend}"}]},
            {"name": "web-h2", "protocol": "http2", "endpoints": [{"addr": f"127.0.0.1:{h2_backend}"}]},
        ],
    }
    path = tmp / "meshcore.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "meshcore.cli", "run", str(path)]), stdout=subprocess.DEVNULL
    )
    wait_port(p1)
    wait_port(p2)
    return proc, p1, p2


WRK_REPORT = HERE / "wrk_report.lua"


def run_wrk(url: str, connections: int, duration: int) -> dict:
    """One closed-loop wrk run (one thread): req/s over wrk's own measured
    time, latency percentiles in ms, and errors (non-2xx/3xx answers plus
    socket errors)."""
    out = subprocess.run(
        pinned(0, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(WRK_REPORT), url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk against {url} reported nothing:\n{out}")
    r = json.loads(line.split(" ", 1)[1])
    if r["requests"] == 0:
        raise RuntimeError(f"wrk against {url} measured nothing:\n{out}")
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000,
        "errors": r["non_2xx_3xx"] + r["socket_errors"],
    }


def h2load_errors(out: str) -> int:
    """Failed requests plus 5xx answers (h2load counts a 502 as succeeded)."""
    failed = re.search(r"requests: .*?(\d+) failed", out)
    server_errors = re.search(r"status codes: .*?(\d+) 5xx", out)
    return sum(int(m.group(1)) for m in (failed, server_errors) if m)


def run_h2load(url: str, connections: int, duration: int, tmp: Path) -> dict:
    """One closed-loop h2load run over `connections` / 10 connections with 10
    streams each: h2load's req/s, latency percentiles in ms from its
    per-request log, and errors."""
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends: earlier runs' samples must not mix in
    streams = 10
    clients = max(1, connections // streams)
    out = subprocess.run(
        pinned(0, ["h2load", f"-c{clients}", f"-m{streams}", f"-D{duration}", f"--log-file={log}", url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    durations = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line.strip())
    if not durations:
        raise RuntimeError(f"h2load measured nothing against {url}:\n{out}")
    pct = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))] / 1000  # noqa: E731
    return {
        "rps": rps,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "requests": int(m.group(1)),
        "errors": h2load_errors(out),
    }


def measure(kind: str, url: str, args, tmp: Path, proxy_pid: int | None) -> dict:
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    if kind == "http1":
        result = run_wrk(url, args.connections, args.duration)
    else:
        result = run_h2load(url, args.connections, args.duration, tmp)
    if proxy_pid:
        used = cpu_seconds(proxy_pid) - before
        result["cpu_us_per_req"] = used / max(result["requests"], 1) * 1e6
        result["rss_mb"] = rss_mb(proxy_pid)
    return result


def median_measures(rounds: list[dict]) -> dict:
    """Each measure's median over the rounds (a median round, chosen by req/s,
    would carry that round's CPU noise into every ratio); errors and stolen
    time are summed and a flag is set if any round set it."""
    out: dict = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds]
        if key in ("errors", "steal_ms"):
            out[key] = sum(values)
        elif isinstance(first, bool):
            out[key] = any(values)
        elif isinstance(first, (int, float)):
            out[key] = statistics.median(values)
        else:
            out[key] = first
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run bench/setup first")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        h1, h2 = free_port(), free_port()
        nginx = start_nginx(tmp, h1, h2)
        proxy, p1, p2 = start_meshcore(tmp, h1, h2)
        try:
            scenarios = {
                "http1": (f"http://127.0.0.1:{h1}/", f"http://127.0.0.1:{p1}/"),
                "h2c": (f"http://127.0.0.1:{h2}/", f"http://127.0.0.1:{p2}/"),
            }
            results = {}
            for name, (direct_url, proxy_url) in scenarios.items():
                kind = "http1" if name == "http1" else "h2"
                warm = argparse.Namespace(**{**vars(args), "duration": 2})
                measure(kind, proxy_url, warm, tmp, None)
                direct, proxied = [], []
                for _ in range(args.rounds):
                    direct.append(measure(kind, direct_url, args, tmp, None))
                    proxied.append(measure(kind, proxy_url, args, tmp, proxy.pid))
                results[name] = {"direct": median_measures(direct), "meshcore": median_measures(proxied)}
                print(f"{name}: {json.dumps(results[name])}", flush=True)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(15)
            nginx.terminate()
            nginx.wait(5)
    lines = [
        f"# meshcore vs direct ({args.connections} connections, {args.duration}s x {args.rounds} rounds, "
        "median of each measure; workers = 1; proxy on CPU 1, nginx + load generator on CPU 0)",
        "",
        "| protocol | path | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for path in ("direct", "meshcore"):
            x = r[path]
            cpu = f"{x['cpu_us_per_req']:.1f}" if "cpu_us_per_req" in x else "–"
            rss = f"{x['rss_mb']:.1f}" if "rss_mb" in x else "–"
            lines.append(
                f"| {name} | {path} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                f"{cpu} | {rss} | {x['errors']} |"
            )
        ratio = r["meshcore"]["rps"] / r["direct"]["rps"]
        lines.append(f"| {name} | meshcore / direct | {ratio:.2f} | | | | | |")
    report = "\n".join(lines) + "\n"
    (out_dir / "proxy_load.md").write_text(report)
    (out_dir / "proxy_load.json").write_text(json.dumps(results, indent=2))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
