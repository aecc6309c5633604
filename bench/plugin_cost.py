#!/usr/bin/env python3
"""The cost of Python plugins per request, measured in one run.

    python bench/plugin_cost.py [--duration 10] [--connections 50] [--rounds 2]

wrk (HTTP/1.1 keep-alive) -> meshcore (`workers = 1`, CPU 1) -> nginx (CPU 0, with wrk).
Four proxies, measured in interleaved rounds:
  none       no plugins configured at all;
  scoped     a plugin loaded but scoped to another route (these requests never enter Python);
  sync       a trivial sync on_request that sets one header;
  async      the same hook written `async def` (runs on the plugin event loop).
Reports req/s, p50/p99 and the proxy's CPU µs per request (from /proc/PID/stat),
and each case's added CPU µs per request against `none`. Needs nginx and wrk (bench/setup).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proxy_load import cpu_seconds, free_port, median_measures, pinned, run_wrk, start_nginx, wait_port  # noqa: E402

CASES = {
    "none": None,
    "scoped": {"path": str(HERE / "plugins" / "trivial_sync.py"), "routes": ["elsewhere"]},
    "sync": {"path": str(HERE / "plugins" / "trivial_sync.py")},
    "async": {"path": str(HERE / "plugins" / "trivial_async.py")},
}


def start_case(tmp: Path, name: str, plugin, backend_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = {
        "workers": 1,
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
        "routes": [
            {
                "name": "elsewhere",
                "listener": "web",
                "path_prefix": "/elsewhere",
                "backends": [{"service": "app"}],
            },
            {"name": "main", "listener": "web", "backends": [{"service": "app"}]},
        ],
        "services": [
            {"name": "app", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{backend_port}"}]}
        ],
        "plugins": [plugin] if plugin else [],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "meshcore.cli", "run", str(path)]), stdout=subprocess.DEVNULL
    )
    wait_port(port)
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        h1, h2 = free_port(), free_port()
        nginx = start_nginx(tmp, h1, h2)
        procs = {}
        try:
            for name, plugin in CASES.items():
                procs[name] = start_case(tmp, name, plugin, h1)
            rounds: dict[str, list[dict]] = {name: [] for name in CASES}
            for _, port in procs.values():
                run_wrk(f"http://127.0.0.1:{port}/", args.connections, 2)  # warm-up
            for _ in range(args.rounds):
                for name, (proc, port) in procs.items():
                    before = cpu_seconds(proc.pid)
                    r = run_wrk(f"http://127.0.0.1:{port}/", args.connections, args.duration)
                    r["cpu_us_per_req"] = (cpu_seconds(proc.pid) - before) / max(r["requests"], 1) * 1e6
                    rounds[name].append(r)
        finally:
            for proc, _ in procs.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
            nginx.terminate()
            nginx.wait(5)
    results = {name: median_measures(rs) for name, rs in rounds.items()}
    base = results["none"]
    lines = [
        f"# Plugin cost per request ({args.connections} connections, {args.duration}s x {args.rounds} rounds "
        "interleaved, median of each measure; workers = 1 on CPU 1; nginx + wrk on CPU 0)",
        "",
        "| case | req/s | req/s vs none | p50 ms | p99 ms | CPU µs/req | added CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['rps'] / base['rps']:.2f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | "
            f"{r['cpu_us_per_req']:.1f} | {r['cpu_us_per_req'] - base['cpu_us_per_req']:+.1f} |"
        )
    report = "\n".join(lines) + "\n"
    (out / "plugin_cost.md").write_text(report)
    (out / "plugin_cost.json").write_text(json.dumps(results, indent=2))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
