#!/usr/bin/env python3
"""Zonal balancing experiment: round-robin vs peak-EWMA vs zonal under a load ramp.

    python bench/zonal.py [--step-seconds 4] [--levels 1,2,4,8,16] [--out bench/out]

Topology (all on 127.0.0.1): the proxy sits in east/zone-a. Two backends each
in zone-a, zone-b (same cluster) and west/zone-c (another cluster). Every
backend has a capacity of 2 concurrent requests with 5 ms of work each, so
latency grows with load. Cross-zone network latency is simulated by delays in
the backends (+2 ms for zone-b, +10 ms for zone-c), not by tc netem. Each
response is 16 KiB. Load is closed-loop with a rising number of concurrent
clients. Egress is priced at $0.01/GB for cross-zone and $0.02/GB for
cross-cluster traffic (both directions summed, as cloud providers bill).
Writes a markdown table and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

from meshcore import Proxy
from meshcore.backend import Backend

RESPONSE_BYTES = 16 * 1024
PRICE_PER_GB = {"zone": 0.01, "cluster": 0.02}
ZONES = {"zone-a": (None, 0.0), "zone-b": (None, 0.002), "zone-c": ("west", 0.010)}


def start_backends() -> list[Backend]:
    out = []
    for zone, (_cluster, delay) in ZONES.items():
        for i in (1, 2):
            b = Backend(f"{zone}-{i}", zone)
            b.set_capacity(0.005, 2)
            b.set_delay(delay)
            out.append(b)
    return out


def proxy_config(balancer: str, backends: list[Backend]) -> dict:
    endpoints = []
    for b in backends:
        cluster = ZONES[b.zone][0]
        endpoints.append({"addr": b.addr, "zone": b.zone, **({"cluster": cluster} if cluster else {})})
    return {
        "zone": "zone-a",
        "cluster": "east",
        "workers": 1,
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "out", "backends": [{"service": "web"}]}],
        "services": [{"name": "web", "balancer": balancer, "protocol": "http1", "endpoints": endpoints}],
    }


def run_level(url: str, clients: int, seconds: float) -> list[tuple[str, float, int, bool]]:
    samples: list[tuple[str, float, int, bool]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        local = []
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = c.get(url)
                    ok = r.status_code == 200
                    local.append((r.headers.get("x-zone", "?"), time.perf_counter() - t0, len(r.content), ok))
                except httpx.HTTPError:
                    local.append(("?", time.perf_counter() - t0, 0, False))
        with lock:
            samples.extend(local)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def summarise(samples) -> dict:
    n = len(samples)
    lat = sorted(s[1] for s in samples)
    by_zone = defaultdict(int)
    bytes_by_zone = defaultdict(int)
    for zone, _, size, _ in samples:
        by_zone[zone] += 1
        bytes_by_zone[zone] += size
    total_bytes = sum(bytes_by_zone.values()) or 1
    cross_zone_bytes = bytes_by_zone["zone-b"]
    cross_cluster_bytes = bytes_by_zone["zone-c"]
    cost = (cross_zone_bytes * PRICE_PER_GB["zone"] + cross_cluster_bytes * PRICE_PER_GB["cluster"]) / 1e9
    return {
        "requests": n,
        "rps": 0.0,
        "local_share": by_zone["zone-a"] / n,
        "cross_zone_share": by_zone["zone-b"] / n,
        "cross_cluster_share": by_zone["zone-c"] / n,
        "cross_bytes_share": (cross_zone_bytes + cross_cluster_bytes) / total_bytes,
        "egress_usd_per_million": cost / n * 1e6,
        "p50_ms": lat[n // 2] * 1000,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
        "success": sum(1 for s in samples if s[3]) / n,
    }


def plot(results: dict, levels: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for balancer, per_level in results.items():
        xs = levels
        axes[0].plot(
            xs,
            [per_level[lv]["cross_zone_share"] + per_level[lv]["cross_cluster_share"] for lv in xs],
            marker="o",
            label=balancer,
        )
        axes[1].plot(xs, [per_level[lv]["egress_usd_per_million"] for lv in xs], marker="o", label=balancer)
        axes[2].plot(xs, [per_level[lv]["p99_ms"] for lv in xs], marker="o", label=balancer)
    for ax, title in zip(
        axes, ("share of requests leaving zone-a", "egress $ per million requests", "p99 latency (ms)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-seconds", type=float, default=4.0)
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backends = start_backends()
    results: dict[str, dict[int, dict]] = {}
    try:
        for balancer in ("round-robin", "peak-ewma", "zonal"):
            with Proxy(proxy_config(balancer, backends)) as proxy:
                url = proxy.url("out", f"/bytes/{RESPONSE_BYTES}")
                run_level(url, 2, 1.0)  # warm-up
                results[balancer] = {}
                for clients in levels:
                    t0 = time.monotonic()
                    samples = run_level(url, clients, args.step_seconds)
                    summary = summarise(samples)
                    summary["rps"] = len(samples) / (time.monotonic() - t0)
                    results[balancer][clients] = summary
                    print(f"{balancer:>11} clients={clients:<3} {json.dumps(summary)}", flush=True)
    finally:
        for b in backends:
            b.stop()
    lines = [
        "# Zonal balancing experiment",
        "",
        "Proxy in east/zone-a; 2 backends each in zone-a, zone-b (+2 ms) and west/zone-c (+10 ms); "
        "capacity 2 x 5 ms per backend; 16 KiB responses; "
        "egress $0.01/GB cross-zone, $0.02/GB cross-cluster.",
        "",
        "| balancer | clients | req/s | local | cross-zone | cross-cluster | bytes leaving zone | "
        "egress $/1M req | p50 ms | p99 ms | success |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for balancer, per_level in results.items():
        for clients, s in per_level.items():
            lines.append(
                f"| {balancer} | {clients} | {s['rps']:.0f} | {s['local_share']:.1%} | "
                f"{s['cross_zone_share']:.1%} | {s['cross_cluster_share']:.1%} | "
                f"{s['cross_bytes_share']:.1%} | "
                f"{s['egress_usd_per_million']:.3f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['success']:.2%} |"
            )
    report = "\n".join(lines) + "\n"
    (out / "zonal.md").write_text(report)
    (out / "zonal.json").write_text(json.dumps(results, indent=2))
    if plot(results, levels, out / "zonal.png"):
        report += f"\n![zonal experiment]({(out / 'zonal.png').name})\n"
        (out / "zonal.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
