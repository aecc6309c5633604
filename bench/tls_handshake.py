#!/usr/bin/env python3
"""What the post-quantum hybrid key exchange costs per mesh handshake, against X25519.

    python bench/tls_handshake.py [--seconds 3] [--rounds 5] [--out bench/results/tls_handshake]

Full mutual-TLS 1.3 handshakes as two proxies make them (the mesh's rustls configs, ECDSA P-256
workload certificates, SPIFFE verification on both sides), client and server in memory on one
thread, so no socket or scheduler is in the measurement. The client offers only the group under
test, or (`default`) what a proxy offers: the hybrid, with an X25519 share beside it for peers
without ML-KEM. Rounds rotate the cases; each reports handshakes per second and the thread's CPU
time per handshake (both sides together), and the table gives the median round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from meshcore import _core, identity

GROUPS = ("X25519", "X25519MLKEM768", "default")
NEGOTIATES = {"X25519": "X25519", "X25519MLKEM768": "X25519MLKEM768", "default": "X25519MLKEM768"}
NAME = "ns/default/sa/api"


def measure(group: str, pems: tuple[str, str, str], expected: str, seconds: float) -> dict[str, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    done, negotiated = _core._bench_handshakes(group, *pems, expected, seconds)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert negotiated == NEGOTIATES[group], (group, negotiated)
    return {"per_second": done / wall, "cpu_us": cpu / done * 1e6, "handshakes": done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per group per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tls_handshake"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp) / "ca"
        identity.init_ca(ca)
        identity.issue(ca, NAME, ttl=timedelta(hours=1), out_prefix=str(Path(tmp) / "api"))
        pems = tuple((Path(tmp) / f).read_text() for f in ("ca/trust-anchor.pem", "api.crt", "api.key"))
    expected = identity.spiffe_id("mesh.local", NAME)
    measure(GROUPS[0], pems, expected, 0.5)  # warm up: first allocations, page faults
    runs: dict[str, list[dict[str, float]]] = {g: [] for g in GROUPS}
    for r in range(args.rounds):
        for group in GROUPS[r % len(GROUPS) :] + GROUPS[: r % len(GROUPS)]:
            runs[group].append(measure(group, pems, expected, args.seconds))
            last = runs[group][-1]
            print(f"round {r + 1} {group}: {last['per_second']:.0f}/s, {last['cpu_us']:.0f} µs CPU")

    median = {
        g: {k: statistics.median(run[k] for run in runs[g]) for k in ("per_second", "cpu_us")} for g in GROUPS
    }
    base = median["X25519"]
    lines = [
        f"# Mesh TLS handshakes: X25519MLKEM768 against X25519 ({args.seconds:g} s x {args.rounds} "
        "rounds per case, interleaved; median round)",
        "",
        "Full mutual TLS 1.3 handshakes between two mesh identities (ECDSA P-256), client and server in",
        "memory on one thread: `python bench/tls_handshake.py`.",
        "",
        "| client offers | negotiated | handshakes/s | vs X25519 | CPU µs/handshake (both sides) | added |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for g in GROUPS:
        m = median[g]
        offered = "X25519MLKEM768, X25519 share too (the mesh's default)" if g == "default" else g
        rate = f"{m['per_second']:.0f} | {m['per_second'] / base['per_second']:.2f}"
        cpu = f"{m['cpu_us']:.0f} | {m['cpu_us'] - base['cpu_us']:+.0f}"
        lines.append(f"| {offered} | {NEGOTIATES[g]} | {rate} | {cpu} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({"median": median, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
