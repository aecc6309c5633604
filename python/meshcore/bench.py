"""Load generation from Python: `meshcore.bench.run(url, rate=..., duration=...)`.

The requests are sent from Rust (its own thread and runtime). With `rate`, the
load is open-loop at a constant rate and each latency counts from when the
request was due (correcting coordinated omission, as wrk2 does); without it,
each connection sends as fast as it can ("max" mode). Latencies are recorded in
an HDR histogram. `https://` URLs use TLS without verifying the server, as wrk.
`plot` needs matplotlib: `pip install 'meshcore[plot]'`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from . import _core
from .errors import MeshcoreError

__all__ = [
    "BenchResult",
    "LoadRun",
    "check_url",
    "check_resolves",
    "run",
    "start",
    "format_table",
    "plot",
    "check_plot",
]

PLOT_INSTALL_HINT = "pip install 'meshcore[plot]'"


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
    # Requests sent again on a new connection because the server closed the old one without
    # taking them (a graceful close, a GOAWAY above them), as any HTTP client does; not errors.
    resent: int = 0

    @property
    def p50(self) -> float:
        return self.latency_ms["p50"]

    @property
    def p99(self) -> float:
        return self.latency_ms["p99"]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def check_url(url: str) -> str:
    """`url` if the load generator can use it, else ValueError saying what is wrong with it."""
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in url):
        raise ValueError(f"invalid URL {url!r}: spaces, control or non-ASCII characters; percent-encode them")
    try:
        parts = urlsplit(url)
    except ValueError as e:  # unbalanced [ ] around an IPv6 address
        raise ValueError(f"invalid URL {url!r}: {e}") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https"):
        looks_like_host = "://" not in url and not url.startswith("/")
        hint = f"; did you mean 'http://{url}'?" if looks_like_host else ""
        raise ValueError(f"invalid URL {url!r}: bench needs http:// or https://{hint}")
    if not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: no host")
    if port == 0:
        raise ValueError(f"invalid URL {url!r}: the port must be a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"invalid URL {url!r}: credentials (user@host) are not sent by bench; leave them out"
        )
    return url


def check_resolves(url: str) -> None:
    """MeshcoreError if the host of a valid `url` has no address (a typo, or no DNS)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MeshcoreError(f"cannot resolve {parts.hostname!r} in {url}: {e.strerror}") from None


class LoadRun:
    """A load test running on its own thread (`start`): `progress()`, `stop()` early, `wait()`."""

    def __init__(self, url: str, handle: Any) -> None:
        self.url = url
        self._handle = handle

    def progress(self) -> tuple[float, int, int]:
        """(seconds elapsed, requests completed, errors) so far."""
        return self._handle.progress()  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Ends the run before its duration; each connection finishes its request in flight."""
        self._handle.stop()

    def wait(self) -> BenchResult:
        """Blocks until the run ends; its result."""
        data = json.loads(self._handle.wait())
        return BenchResult(
            url=self.url,
            requests=data["requests"],
            seconds=data["seconds"],
            rps=data["rps"],
            target_rps=data["target_rps"],
            latency_ms=data["latency_ms"],
            statuses={int(k): v for k, v in data["statuses"].items()},
            errors=data["errors"],
            bytes=data["bytes"],
            distribution=[tuple(x) for x in data["distribution"]],
            resent=data["resent"],
        )


def start(
    url: str,
    rate: Optional[float] = None,
    duration: float = 10.0,
    connections: int = 10,
    http2: bool = False,
    streams: int = 10,
    timeout: float = 10.0,
    host: Optional[str] = None,
) -> LoadRun:
    """Starts a load test against `url` (see `run`) and returns at once."""
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for max mode)")
    check_url(url)
    handle = _core._bench_start(
        url, rate, float(duration), int(connections), bool(http2), int(streams), float(timeout), host
    )
    return LoadRun(url, handle)


def run(
    url: str,
    rate: Optional[float] = None,
    duration: float = 10.0,
    connections: int = 10,
    http2: bool = False,
    streams: int = 10,
    timeout: float = 10.0,
    progress: Optional[Callable[[float, int, int], None]] = None,
    host: Optional[str] = None,
) -> BenchResult:
    """Runs a load test against `url` and returns its result.

    `host` is sent as the Host header (HTTP/1.1) or :authority (HTTP/2) instead of the URL's, to
    reach a proxy's host route at a loopback address.

    `progress(elapsed_s, completed, errors)` is called about ten times a second, if given.
    """
    load = start(url, rate, duration, connections, http2, streams, timeout, host)
    if progress is not None:
        while True:
            elapsed, done, errors = load.progress()
            progress(elapsed, done, errors)
            if elapsed >= duration:
                break
            time.sleep(0.1)
    return load.wait()


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


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; MeshcoreError naming the extra if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MeshcoreError(
            f"plotting needs matplotlib, which cannot be imported ({e}): {PLOT_INSTALL_HINT}"
        ) from None
    return plt


def check_plot(path: str) -> None:
    """Fails before a run, not after it, if `plot(result, path)` could not write its PNG."""
    _pyplot()
    directory = Path(path).parent
    if not directory.is_dir():
        raise MeshcoreError(f"cannot write the plot to {path}: directory {str(directory)!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise MeshcoreError(f"cannot write the plot to {path}: directory {str(directory)!r} is not writable")


def plot(r: BenchResult, path: str) -> None:
    """A latency-by-percentile PNG (needs matplotlib: pip install 'meshcore[plot]')."""
    plt = _pyplot()
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
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise MeshcoreError(f"cannot write the plot to {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
