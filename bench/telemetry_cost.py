#!/usr/bin/env python3
"""What access logs, tracing and tap cost per request, measured in one run (issue #20).

    python bench/telemetry_cost.py [--duration 10] [--rounds 3] [--connections 50] [--quick]

wrk (HTTP/1.1 keep-alive) -> meshcore (`workers = 1`, CPU 1) -> nginx (CPU 0, with wrk).
One proxy per case, all started up front and measured in interleaved rounds (the order rotated
each round):
  off                no telemetry at all (the baseline);
  access-json        `access_log = {path = FILE}` (JSON lines to a file);
  access-common      the same in the Common Log Format;
  tracing            `[tracing] sampling = 1.0, otlp = SINK`: every request sampled, its span
                     exported to a minimal OTLP/HTTP sink (bench/span_sink.py, CPU 0);
  tracing-propagate  `[tracing] sampling = 1.0` without a collector (trace context only);
  tap                no config change, but a reader consuming the admin API's GET /tap (JSON lines)
                     for the whole measurement (a thread of this script, CPU 0);
  all                access-json and tracing together.
Reports req/s, p50/p99, the proxy's CPU µs per request (from /proc/PID/stat: its access log
writer, span exporter and admin API threads included) and req/s as a ratio to `off`, against the
issue's bar: access logs and tracing cost less than 10 % of req/s (ratio >= 0.90). Also what each
case's telemetry did: log bytes and lines written or dropped, spans exported or dropped, summaries
the tap got and tap_dropped_total. Exits 1 if a check fails (errors, a log that did not grow, no
span exported, a tap that got nothing).

Writes bench/results/telemetry_cost.md and .json (with --quick, a 2 s single-round check that
the script runs: bench/out/ unless --out is given). Needs nginx and wrk (bench/setup).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proxy_load import cpu_seconds, free_port, median_measures, pinned, run_wrk, start_nginx, wait_port  # noqa: E402

CASES = ("off", "access-json", "access-common", "tracing", "tracing-propagate", "tap", "all")
# The bar: access logs and tracing on cost less than 10 % of req/s.
BAR = 0.90
HELD_TO_BAR = ("access-json", "access-common", "tracing", "tracing-propagate", "all")


def telemetry_config(case: str, tmp: Path, sink: str) -> dict[str, Any]:
    """The config keys that turn on `case`'s telemetry."""
    access_json = {"access_log": {"format": "json", "path": str(tmp / f"{case}.log")}}
    exported = {"tracing": {"sampling": 1.0, "otlp": sink}}
    return {
        "off": {},
        "access-json": access_json,
        "access-common": {"access_log": {"format": "common", "path": str(tmp / f"{case}.log")}},
        "tracing": exported,
        "tracing-propagate": {"tracing": {"sampling": 1.0}},
        "tap": {},
        "all": {**access_json, **exported},
    }[case]


@dataclass
class Proxy:
    case: str
    proc: subprocess.Popen
    port: int
    admin: str
    log: Optional[Path]
    exports: bool  # spans go to the sink
    # Summed over the run, warm-up included where it says so.
    requests: int = 0  # wrk's completed requests, warm-up included
    log_bytes: int = 0  # what the log grew by during the measurements
    tap_summaries: int = 0
    tap_requests: int = 0  # the requests measured while tapping
    tap_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def metrics(self) -> str:
        return httpx.get(f"http://{self.admin}/metrics", timeout=10).text


def start_proxy(tmp: Path, case: str, backend_port: int, sink: str) -> Proxy:
    port, admin = free_port(), f"127.0.0.1:{free_port()}"
    extra = telemetry_config(case, tmp, sink)
    cfg = {
        "workers": 1,
        "admin": admin,
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
        "routes": [{"name": "main", "listener": "web", "backends": [{"service": "app"}]}],
        "services": [
            {"name": "app", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{backend_port}"}]}
        ],
        **extra,
    }
    path = tmp / f"{case}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "meshcore.cli", "run", str(path)]), stdout=subprocess.DEVNULL
    )
    wait_port(port)
    wait_port(int(admin.rsplit(":", 1)[1]))
    log = Path(extra["access_log"]["path"]) if "access_log" in extra else None
    exports = bool(extra.get("tracing", {}).get("otlp"))
    return Proxy(case, proc, port, admin, log, exports)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += float(value)
    return total


DROPPED_NOTICE = re.compile(rb'^\{"dropped": ?\d+\}$', re.M)


class TapReader(threading.Thread):
    """Consumes a proxy's GET /tap (JSON lines) until stopped, counting the summaries it gets.
    It counts whole lines without decoding them, so that the reader keeps up as a cheap tool
    would; what it misses anyway the proxy drops and counts (tap_dropped_total)."""

    def __init__(self, admin: str) -> None:
        super().__init__(name="tap-reader", daemon=True)
        self.admin = admin
        self.summaries = 0
        self.error: Optional[str] = None
        self.opened = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            timeout = httpx.Timeout(10, read=30)
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", f"http://{self.admin}/tap") as s,
            ):
                if s.status_code != 200:
                    self.error = f"GET /tap answered {s.status_code}: {s.read().decode(errors='replace')}"
                    return
                self.opened.set()  # the tap is open once the headers are sent
                tail = b""
                for chunk in s.iter_bytes():
                    data = tail + chunk
                    cut = data.rfind(b"\n") + 1
                    whole, tail = data[:cut], data[cut:]
                    notices = len(DROPPED_NOTICE.findall(whole))  # `{"dropped": N}` lines
                    # `whole` starts at a line's start: count the lines that are JSON objects.
                    objects = whole.startswith(b"{") + whole.count(b"\n{", 0, max(len(whole) - 1, 0))
                    self.summaries += objects - notices
                    if self.stopping.is_set():
                        return
        except Exception as e:  # reported as a failed check, not lost in a thread
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.opened.set()

    def stop(self, proxy_url: str) -> None:
        self.stopping.set()
        try:
            httpx.get(proxy_url, timeout=10)  # one more summary wakes a reader waiting for data
        finally:
            self.join(15)
        if self.is_alive():
            self.error = self.error or "the tap reader did not stop"


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all the process's threads: a telemetry
    thread woken per request shows here before it shows in req/s."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches" in line)
    return total


def measure(p: Proxy, args: argparse.Namespace) -> dict:
    log_before = p.log.stat().st_size if p.log and p.log.exists() else 0
    tap = None
    if p.case == "tap":
        tap = TapReader(p.admin)
        tap.start()
        tap.opened.wait(15)
    before, switches = cpu_seconds(p.proc.pid), context_switches(p.proc.pid)
    r = run_wrk(p.url, args.connections, args.duration)
    r["cpu_us_per_req"] = (cpu_seconds(p.proc.pid) - before) / max(r["requests"], 1) * 1e6
    r["switches_per_req"] = (context_switches(p.proc.pid) - switches) / max(r["requests"], 1)
    p.requests += r["requests"]
    if tap is not None:
        tap.stop(p.url)
        p.tap_summaries += tap.summaries
        p.tap_requests += r["requests"]
        if tap.error:
            p.tap_errors.append(tap.error)
    if p.log:
        size = p.log.stat().st_size if p.log.exists() else 0
        p.log_bytes += size - log_before
        # The log is opened for appending, so truncating it keeps the disk from filling over
        # long runs without disturbing the writer (as logrotate's copytruncate does).
        if p.log.exists():
            os.truncate(p.log, 0)
    return r


def settled_metrics(p: Proxy, timeout: float = 10.0) -> str:
    """The proxy's /metrics once its span exporter has dealt with every span it will get (the
    last batch waits up to the export interval, 1 s): unchanged counts over 1.5 s, or `timeout`."""
    text = p.metrics()
    if not p.exports:
        return text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.5)
        newer = p.metrics()
        done = lambda t: [metric(t, n) for n in ("trace_spans_exported_total", "trace_spans_dropped_total")]  # noqa: E731
        if done(newer) == done(text):
            return newer
        text = newer
    return text


def telemetry_counts(p: Proxy, text: str) -> dict:
    counts: dict[str, Any] = {"requests_total": p.requests}
    if p.log:
        counts["log_bytes"] = p.log_bytes
        counts["log_lines"] = int(metric(text, "access_log_lines_total"))
        counts["log_dropped_behind"] = int(metric(text, "access_log_dropped_total", reason="behind"))
        counts["log_dropped_write"] = int(metric(text, "access_log_dropped_total", reason="write"))
    if p.exports:
        counts["spans_exported"] = int(metric(text, "trace_spans_exported_total"))
        counts["spans_dropped_queue"] = int(metric(text, "trace_spans_dropped_total", reason="queue"))
        counts["spans_dropped_export"] = int(metric(text, "trace_spans_dropped_total", reason="export"))
    if p.case == "tap":
        counts["tap_summaries"] = p.tap_summaries
        counts["tap_requests"] = p.tap_requests
        counts["tap_dropped"] = int(metric(text, "tap_dropped_total"))
        counts["tap_errors"] = p.tap_errors
    return counts


def problems_of(case: str, r: dict, c: dict) -> list[str]:
    """What makes this case's numbers untrustworthy: the run did not do what it measures."""
    found = []
    if r["errors"]:
        found.append(f"{case}: {r['errors']} errors (non-2xx/3xx answers or socket errors)")
    if "log_bytes" in c and (c["log_bytes"] <= 0 or c["log_lines"] <= 0):
        found.append(f"{case}: the access log did not grow ({c['log_bytes']} bytes, {c['log_lines']} lines)")
    if "spans_exported" in c and c["spans_exported"] <= 0:
        found.append(f"{case}: no span exported (trace_spans_exported_total is 0)")
    if case == "tap":
        found += [f"tap: {e}" for e in c["tap_errors"]]
        if c["tap_summaries"] <= 0:
            found.append("tap: the reader got no summary")
    return found


def what_it_did(case: str, c: dict) -> Optional[str]:
    """One line on what the case's telemetry did over the whole run."""
    if case == "tap":
        seen = c["tap_summaries"] / max(c["tap_requests"], 1)
        return (
            f"tap: the reader got {c['tap_summaries']} summaries for {c['tap_requests']} requests measured "
            f"({seen:.0%}); tap_dropped_total {c['tap_dropped']}"
            + (" (the reader fell behind; requests did not wait for it)" if c["tap_dropped"] else "")
        )
    parts = []
    if "log_bytes" in c:
        dropped = c["log_dropped_behind"] + c["log_dropped_write"]
        parts.append(
            f"the log grew {c['log_bytes'] / 1e6:.1f} MB; {c['log_lines']} lines written, {dropped} dropped "
            f"(behind {c['log_dropped_behind']}, write {c['log_dropped_write']})"
        )
    if "spans_exported" in c:
        dropped = c["spans_dropped_queue"] + c["spans_dropped_export"]
        note = f"{c['spans_exported']} spans exported, {dropped} dropped (queue {c['spans_dropped_queue']}, "
        note += f"export {c['spans_dropped_export']}) for {c['requests_total']} requests (warm-up included)"
        if dropped:
            note += ": the sink did not keep up, so those spans cost less than exported ones would"
        parts.append(note)
    return f"{case}: " + "; ".join(parts) if parts else None


def describe_build() -> str:
    version = subprocess.run(
        [sys.executable, "-m", "meshcore.cli", "--version"], capture_output=True, text=True
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return f"{version} (commit {commit})" if commit else version


def report(args: argparse.Namespace, build: str, results: dict, counts: dict) -> tuple[str, list[str]]:
    base = results["off"]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        f"# Telemetry cost per request ({args.connections} connections, {args.duration}s x {args.rounds} "
        "rounds interleaved, order rotated each round, median of each measure; workers = 1 on CPU 1; "
        "nginx, wrk, the span sink and the tap reader on CPU 0)",
        "",
        f"`{command}` with {build}",
        "",
        "| case | req/s | req/s vs off | p50 ms | p99 ms | CPU µs/req | added CPU µs/req "
        "| ctx switches/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        added = r["cpu_us_per_req"] - base["cpu_us_per_req"]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['ratio']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_us_per_req']:.1f} | {added:+.1f} | {r['switches_per_req']:.2f} | {r['errors']} |"
        )
    lines += [
        "",
        "CPU µs/req is the proxy's own (its access log writer, span exporter and admin API threads "
        "included); ctx switches/req, its threads' context switches, voluntary or not. The span sink "
        "and the tap reader share CPU 0 with wrk and nginx, so their own CPU "
        "lowers the req/s of `tracing`, `all` and `tap` a little whatever the proxy does.",
    ]
    lines += ["", f"Against the issue's bar (req/s at least {BAR:.2f} of `off`):", ""]
    for name, r in results.items():
        if name == "off":
            continue
        verdict = "meets the 10 % bar" if r["meets_bar"] else "does NOT meet the 10 % bar"
        if name not in HELD_TO_BAR:
            verdict += " (an open tap is not held to it)"
        lines.append(f"- {name}: {r['ratio']:.2f} of off: {verdict}")
    did = [line for name in results if (line := what_it_did(name, counts[name]))]
    if did:
        lines += ["", "What the telemetry did over the run:", ""] + [f"- {line}" for line in did]
    problems = [p for name, r in results.items() for p in problems_of(name, r, counts[name])]
    if problems:
        lines += ["", "**Checks failed** (these numbers do not measure what they claim):", ""]
        lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n", problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--connections", type=int, default=50, help="wrk's connections (default 50)")
    ap.add_argument("--quick", action="store_true", help="2 s, 1 round: check that the script runs")
    ap.add_argument("--out", help="where the report goes (default bench/results, bench/out with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    out = Path(args.out) if args.out else HERE / ("out" if args.quick else "results")
    out.mkdir(parents=True, exist_ok=True)
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {0})  # the tap reader thread runs on the load generator's CPU
    build = describe_build()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        h1, h2, sink_port = free_port(), free_port(), free_port()
        nginx = start_nginx(tmp, h1, h2)
        sink = subprocess.Popen(
            pinned(0, [sys.executable, str(HERE / "span_sink.py"), str(sink_port)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        proxies: dict[str, Proxy] = {}
        try:
            wait_port(sink_port)
            for case in CASES:
                proxies[case] = start_proxy(tmp, case, h1, f"127.0.0.1:{sink_port}")
            for p in proxies.values():
                p.requests += run_wrk(p.url, args.connections, 2)["requests"]  # warm-up
            rounds: dict[str, list[dict]] = {case: [] for case in CASES}
            for i in range(args.rounds):
                order = CASES[i % len(CASES) :] + CASES[: i % len(CASES)]
                for case in order:
                    rounds[case].append(measure(proxies[case], args))
                print(
                    f"round {i + 1}/{args.rounds}: "
                    + ", ".join(f"{c} {rounds[c][-1]['rps']:.0f}" for c in CASES),
                    flush=True,
                )
            counts = {case: telemetry_counts(p, settled_metrics(p)) for case, p in proxies.items()}
        finally:
            for p in proxies.values():
                p.proc.send_signal(signal.SIGTERM)
            for p in proxies.values():
                p.proc.wait(15)
            sink.send_signal(signal.SIGTERM)
            sink_said = sink.communicate(timeout=10)[0].strip()
            nginx.terminate()
            nginx.wait(5)
    results = {case: median_measures(rs) for case, rs in rounds.items()}
    for r in results.values():
        r["ratio"] = r["rps"] / results["off"]["rps"]
        r["meets_bar"] = r["ratio"] >= BAR
    text, problems = report(args, build, results, counts)
    if sink_said:
        text += f"\nThe span sink took: {sink_said}\n"
    (out / "telemetry_cost.md").write_text(text)
    (out / "telemetry_cost.json").write_text(
        json.dumps(
            {
                "command": sys.argv,
                "build": build,
                "settings": {k: v for k, v in vars(args).items() if k != "out"},
                "bar": BAR,
                "results": results,
                "telemetry": counts,
                "rounds": rounds,
                "problems": problems,
            },
            indent=2,
        )
    )
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
