"""Load generation from Python: `meshcore.bench.run(url, rate=..., duration=...)`.

The requests are sent from Rust (its own thread and runtime). With `rate`, the
load is open-loop at a constant rate and each latency counts from when the
request was due (correcting coordinated omission, as wrk2 does); without it,
each connection sends as fast as it can ("max" mode). Latencies are recorded in
an HDR histogram. `https://` URLs use TLS without verifying the server, as wrk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import _core

__all__ = ["BenchResult", "run", "format_table", "plot"]


@dataclass
class BenchResult:
    url: str
    requests: int
    seconds: float
    rps: float
    target_rps: Optional[float]
    latency_ms: dict[str, float]
    statuses: dict[int, int]
    errors: dict[str, int]
    bytes: int
    distribution: list[tuple[float, float]] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return self.latency_ms["p50"]

    @property
    def p99(self) -> float:
        return self.latency_ms["p99"]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def run(
    url: str,
    rate: Optional[float] = None,
    duration: float = 10.0,
    connections: int = 10,
    http2: bool = False,
    streams: int = 10,
    timeout: float = 10.0,
    progress: Optional[Callable[[float, int, int], None]] = None,
) -> BenchResult:
    """Runs a load test against `url` and returns its result.

    `progress(elapsed_s, completed, errors)` is called about ten times a second, if given.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for max mode)")
    handle = _core._bench_start(
        url, rate, float(duration), int(connections), bool(http2), int(streams), float(timeout)
    )
    if progress is not None:
        while True:
            elapsed, done, errors = handle.progress()
            progress(elapsed, done, errors)
            if elapsed >= duration:
                break
            time.sleep(0.1)
    data = json.loads(handle.wait())
    return BenchResult(
        url=url,
        requests=data["requests"],
        seconds=data["seconds"],
        rps=data["rps"],
        target_rps=data["target_rps"],
        latency_ms=data["latency_ms"],
        statuses={int(k): v for k, v in data["statuses"].items()},
        errors=data["errors"],
        bytes=data["bytes"],
        distribution=[tuple(x) for x in data["distribution"]],
    )


def format_table(r: BenchResult) -> str:
    lat = r.latency_ms
    rows = [
        ("requests", f"{r.requests}"),
        ("req/s", f"{r.rps:.1f}" + (f" (target {r.target_rps:g})" if r.target_rps else " (max)")),
        *((name, f"{lat[name]:.3f} ms") for name in ("p50", "p90", "p99", "p99.9", "max")),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())) or "none"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot(r: BenchResult, path: str) -> None:
    """A latency-by-percentile PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [100.0 / max(100.0 - q, 0.001) for q, _ in r.distribution]  # 1/(1-q): tail to the right
    ys = [ms for _, ms in r.distribution]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, ys, marker="o")
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{q:g}%" for q, _ in r.distribution], rotation=45)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{r.url}: {r.rps:.0f} req/s")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
