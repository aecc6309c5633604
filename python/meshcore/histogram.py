"""Latency histograms as the core reports them (`route_stats`): per-bucket counts, the last
bucket past the last bound. Shared by the lifecycle's verifier (one proxy) and the fleet (many)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

__all__ = ["quantile"]


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> Optional[float]:
    """Prometheus' histogram_quantile(q) of per-bucket `counts`, in the bounds' unit; None without
    any count. A rank in the last bucket (past the last bound) is the last bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(counts):
        if n and cumulative + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - cumulative) / n
        cumulative += n
    return float(bounds[-1])
