"""Golden numbers over an interval, from two samples of an admin API's `/stats` (cumulative counts):
per route and per service, requests per second, success rate and latency percentiles of what was
answered between the samples. What `meshcore top` shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..histogram import quantile

__all__ = ["KINDS", "SORT_KEYS", "Row", "golden_rows", "sort_rows", "check_stats"]

KINDS = ("routes", "services")
# Sort key -> what the footer calls it.
SORT_KEYS = {"rps": "req/s", "success": "success", "p99": "p99", "name": "name"}


@dataclass(frozen=True)
class Row:
    """One route or service. The interval's numbers are None when nothing was answered in it (or
    there is no earlier sample to compare with): no traffic is not 0 % success."""

    name: str
    requests: int  # answered since the proxy started
    failures: int
    rps: Optional[float] = None
    success_rate: Optional[float] = None  # 0..1
    p50_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p99_ms: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, digits in (("rps", 3), ("success_rate", 6), ("p50_ms", 3), ("p95_ms", 3), ("p99_ms", 3)):
            if out[key] is not None:
                out[key] = round(out[key], digits)
        return out


def check_stats(stats: Any) -> dict[str, Any]:
    """`stats` if it has the shape `/stats` gives, else ValueError naming what is missing."""
    if not isinstance(stats, dict):
        raise ValueError(f"expected a JSON object, got {type(stats).__name__}")
    for key in ("buckets_ms", *KINDS):
        if key not in stats:
            raise ValueError(f"no {key!r} in the answer")
    for kind in KINDS:
        if not isinstance(stats[kind], dict):
            raise ValueError(f"{kind!r}: expected an object by name")
        for name, counts in stats[kind].items():
            if not isinstance(counts, dict) or not {"responses", "failures", "buckets"} <= counts.keys():
                raise ValueError(f"{kind}[{name!r}]: expected responses, failures and buckets")
    return stats


def _row(
    name: str,
    now: Mapping[str, Any],
    then: Optional[Mapping[str, Any]],
    seconds: float,
    bounds: Sequence[float],
) -> Row:
    total, failures = int(now["responses"]), int(now["failures"])
    # A name missing from the earlier sample is new (added by a reload): it started at zero.
    then = then or {"responses": 0, "failures": 0, "buckets": [0] * len(now["buckets"])}
    answered = total - int(then["responses"])
    if seconds <= 0 or answered <= 0 or len(then["buckets"]) != len(now["buckets"]):
        # Nothing answered, or counts went back (another process behind the address): no rates.
        return Row(name, total, failures)
    failed = failures - int(then["failures"])
    buckets = [max(0, a - b) for a, b in zip(now["buckets"], then["buckets"])]
    return Row(
        name,
        total,
        failures,
        rps=answered / seconds,
        success_rate=min(1.0, max(0.0, 1.0 - failed / answered)),
        p50_ms=quantile(0.50, bounds, buckets),
        p95_ms=quantile(0.95, bounds, buckets),
        p99_ms=quantile(0.99, bounds, buckets),
    )


def golden_rows(
    now: Mapping[str, Any], then: Optional[Mapping[str, Any]], seconds: float
) -> dict[str, list[Row]]:
    """Rows per kind ("routes", "services") for the `seconds` between samples `then` and `now`;
    without `then`, totals only."""
    bounds = now["buckets_ms"]
    rows: dict[str, list[Row]] = {}
    for kind in KINDS:
        if then is None:
            rows[kind] = [Row(name, int(c["responses"]), int(c["failures"])) for name, c in now[kind].items()]
        else:
            earlier = then[kind]
            rows[kind] = [_row(name, c, earlier.get(name), seconds, bounds) for name, c in now[kind].items()]
    return rows


def sort_rows(rows: Sequence[Row], key: str) -> list[Row]:
    """Busiest, least successful or slowest first (by name among equals); rows without traffic in
    the interval last. By name: alphabetical."""
    by_name = sorted(rows, key=lambda r: r.name)
    if key == "name":
        return by_name
    if key == "rps":
        return sorted(by_name, key=lambda r: (r.rps is None, -(r.rps or 0.0)))
    if key == "success":
        return sorted(by_name, key=lambda r: (r.success_rate is None, r.success_rate or 0.0))
    if key == "p99":
        return sorted(by_name, key=lambda r: (r.p99_ms is None, -(r.p99_ms or 0.0)))
    raise ValueError(f"unknown sort key {key!r} (one of {', '.join(SORT_KEYS)})")
