"""bench/netns/cost, the cost experiment on hosts in network namespaces, run with tiny settings:
it builds its network, runs every balancer's ramp and zone failure, and writes a table, JSON and a
plot that hold what they say. Its numbers are the bench's business, not this test's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from netns_helpers import require_netns

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "netns" / "cost"
BALANCERS = ["zonal", "peak-ewma", "round-robin"]
RATES = [20, 60]


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the table under `## heading`."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header, rule, *rows = lines
    width = len(header.strip("|").split("|"))
    assert len(rule.strip("|").split("|")) == width
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert all(len(c) == width for c in cells), rows
    return cells


def test_tiny_run_writes_a_well_formed_table_json_and_plot(tmp_path):
    require_netns()
    done = run_script(
        "--rates",
        ",".join(map(str, RATES)),
        "--step-seconds",
        "0.5",
        "--failure-rate",
        "40",
        "--failure-timeline",
        "0.5,0.5,0.5",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]

    doc = json.loads((tmp_path / "cost.json").read_text())
    assert list(doc["results"]) == BALANCERS
    for balancer, r in doc["results"].items():
        assert [s["target_rps"] for s in r["ramp"]] == RATES
        for s in [*r["ramp"], r["failure"]]:
            assert s["requests"] > 0, (balancer, s)
            assert 0.0 <= s["success"] <= 1.0
            assert 0.0 <= s["in_zone_bytes_share"] <= 1.0
            assert s["p50_ms"] <= s["p99_ms"]
            assert s["cross_zone_bytes"] >= 0 and s["cross_cluster_bytes"] >= 0
            assert abs(sum(s["tier_share"].values()) - 1.0) < 1e-6
        assert r["failure"]["timeline"], "no samples of the proxy's endpoints during the failure"
    # Round-robin spreads over all six backends, so the kernel saw bytes cross both kinds of boundary.
    for s in doc["results"]["round-robin"]["ramp"]:
        assert s["cross_zone_bytes"] > 0 and s["cross_cluster_bytes"] > 0, s

    md = (tmp_path / "cost.md").read_text()
    ramp = table_rows(md, "Load ramp")
    assert [(row[0], float(row[1])) for row in ramp] == [(b, r) for b in BALANCERS for r in RATES]
    for row in ramp:
        assert re.fullmatch(r"\d+\.\d+%", row[3]), row  # in zone
        assert re.fullmatch(r"\d+\.\d{3}", row[6]), row  # $ per million
    failure = table_rows(md, "Local zone failure")
    assert [row[0] for row in failure] == BALANCERS
    assert "## Against the targets" in md
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_balancer_is_refused_naming_the_flag():
    done = run_script("--balancers", "zonal,fastest")
    assert done.returncode == 2
    assert "--balancers: unknown 'fastest'" in done.stderr
