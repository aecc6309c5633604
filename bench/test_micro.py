"""Micro-benchmarks of the hot-path pieces, timed in Rust loops.

    pytest bench/test_micro.py --benchmark-columns=mean,stddev,rounds

Each call runs ITERATIONS operations inside Rust, so the per-operation cost is
the reported mean divided by ITERATIONS (also stored as extra_info ns_per_op).
"""

from __future__ import annotations

import pytest

from meshcore import _core

ITERATIONS = 20_000


@pytest.mark.parametrize(
    "what, size",
    [
        ("pick-peak-ewma", 2),
        ("pick-peak-ewma", 10),
        ("pick-peak-ewma", 100),
        ("pick-round-robin", 10),
        ("route-match", 1),
        ("route-match", 20),
        ("header-rewrite", 0),
        ("metrics-record", 0),
    ],
)
def test_hot_path(benchmark, what, size):
    checksum = benchmark(_core._bench_loop, what, size, ITERATIONS)
    assert checksum > 0
    benchmark.extra_info["ns_per_op"] = round(benchmark.stats.stats.mean / ITERATIONS * 1e9, 1)
