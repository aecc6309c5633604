#!/usr/bin/env python3
"""What access logs, tracing and tap cost per request, measured in one run (issue #20).

    python bench/telemetry_cost.py [--duration 5] [--rounds 5] [--connections 50] [--cases C,...] [--quick]

wrk (HTTP/1.1 keep-alive) -> meshcore (`workers = 1`, CPU 1) -> nginx (CPU 0, with wrk).
One proxy serves every case: its telemetry is switched by applying a config through the admin
API (PUT /config), so a case and the baseline differ only in what the case turns on, not in the
process (two processes of the same build can differ by several percent on this machine). Each
round measures every case between two measurements of `off` (off, case, off, case, ..., off; the
order of cases rotates by round), each after a 1 s warm-up in its setting: this shared machine's
speed drifts by more than the bar over minutes. A case's ratio is the median over the rounds of
its req/s over the mean of the two `off` beside it; its added CPU, the median of the differences
from their mean CPU. The cases:
  off                no telemetry at all (the baseline);
  access-json        `access_log = {path = FILE}` (JSON lines to a file);
  access-common      the same in the Common Log Format;
  tracing            `[tracing] sampling = 1.0, otlp = SINK`: every request sampled, its span
                     exported to a minimal OTLP/HTTP sink (an nginx that reads and discards
                     each POST /v1/traces and answers 200 with an empty body, CPU 0);
  tracing-propagate  `[tracing] sampling = 1.0` without a collector (trace context only);
  tap                telemetry off, but a reader consuming the admin API's GET /tap (JSON lines)
                     for the whole measurement (a thread of this script, CPU 0);
  all                access-json and tracing together.
Reports req/s, p50/p99, the proxy's CPU µs per request (from /proc/PID/stat: its access log
writer, span exporter and admin API threads included) and req/s as a ratio to `off`, against the
issue's bar: access logs and tracing on cost less than 10 % of req/s (ratio >= 0.90), each on
its own and both together (`all`). Also what each case's telemetry did: lines written or dropped,
spans exported or dropped, summaries the tap got and tap_dropped_total. Exits 1 if a check fails
(errors, a log that got no line, no span exported, a tap that got nothing, a refused config).

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
import statistics
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
class Tally:
    """What one case's telemetry did over the measurements."""

    requests: int = 0  # wrk's completed requests while the case was on (warm-ups included)
    log_lines: int = 0
    log_dropped_behind: int = 0
    log_dropped_write: int = 0
    log_bytes: int = 0
    spans_exported: int = 0
    spans_dropped_queue: int = 0
    spans_dropped_export: int = 0
    tap_summaries: int = 0
    tap_requests: int = 0  # the requests measured while tapping
    tap_dropped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Subject:
    """The one proxy every case runs on."""

    proc: subprocess.Popen
    port: int
    admin: str
    tmp: Path
    backend_port: int
    sink: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def metrics(self) -> str:
        return httpx.get(f"http://{self.admin}/metrics", timeout=10).text

    def config(self, case: str) -> dict[str, Any]:
        return {
            "workers": 1,
            "admin": self.admin,
            "listeners": [{"name": "web", "bind": f"127.0.0.1:{self.port}"}],
            "routes": [{"name": "main", "listener": "web", "backends": [{"service": "app"}]}],
            "services": [
                {
                    "name": "app",
                    "protocol": "http1",
                    "endpoints": [{"addr": f"127.0.0.1:{self.backend_port}"}],
                }
            ],
            **telemetry_config(case, self.tmp, self.sink),
        }

    def apply(self, case: str) -> None:
        """Switches the proxy's telemetry to `case`'s; raises if the proxy refuses it."""
        r = httpx.put(f"http://{self.admin}/config", json=self.config(case), timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"PUT /config for {case} answered {r.status_code}: {r.text}")

    def log(self, case: str) -> Optional[Path]:
        settings = telemetry_config(case, self.tmp, self.sink).get("access_log")
        return Path(settings["path"]) if settings else None


def start_span_sink(tmp: Path, port: int) -> subprocess.Popen:
    """A span sink that takes OTLP/HTTP exports over keep-alive HTTP/1.1: an nginx answering
    POST /v1/traces with 200 and an empty body (an empty ExportTraceServiceResponse: no partial
    rejection), the body read and discarded. It shares CPU 0 with wrk and nginx, so it must cost
    little per span: a Python sink took about 1 µs of that CPU per span, which lowered the req/s of
    the tracing cases whatever the proxy did. Each request is logged (status, Content-Length)."""
    (tmp / "sink").mkdir()
    conf = tmp / "sink" / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/sink/nginx.pid;
error_log {tmp}/sink/error.log;
events {{ worker_connections 64; }}
http {{
    log_format sink '$status $content_length';
    access_log {tmp}/sink/posts.log sink;
    keepalive_requests 1000000;
    client_max_body_size 64m;
    client_body_temp_path {tmp}/sink;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/traces {{ default_type application/x-protobuf; return 200 ""; }}
        location / {{ return 404; }}
    }}
}}
""")
    proc = subprocess.Popen(pinned(0, ["nginx", "-c", str(conf), "-p", str(tmp / "sink")]))
    wait_port(port)
    return proc


def sink_took(tmp: Path) -> str:
    """What the span sink got: POSTs answered 200, their bytes, and requests refused."""
    posts = refused = size = 0
    log = tmp / "sink" / "posts.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        status, _, length = line.partition(" ")
        if status == "200":
            posts += 1
            size += int(length) if length.isdigit() else 0
        else:
            refused += 1
    return json.dumps({"posts": posts, "bytes": size, "refused": refused})


def start_subject(tmp: Path, backend_port: int, sink: str) -> Subject:
    port, admin = free_port(), f"127.0.0.1:{free_port()}"
    subject = Subject(None, port, admin, tmp, backend_port, sink)  # type: ignore[arg-type]
    path = tmp / "meshcore.json"
    path.write_text(json.dumps(subject.config("off")))
    subject.proc = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "meshcore.cli", "run", str(path)]), stdout=subprocess.DEVNULL
    )
    wait_port(port)
    wait_port(int(admin.rsplit(":", 1)[1]))
    return subject


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


def settled(subject: Subject, names: tuple[str, ...], timeout: float = 5.0) -> str:
    """The proxy's /metrics once the sums of `names` stop moving: the log writer drains within
    milliseconds, the span exporter within its export interval (1 s)."""
    text = subject.metrics()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        newer = subject.metrics()
        if [metric(newer, n) for n in names] == [metric(text, n) for n in names]:
            return newer
        text = newer
    return text


def measure(subject: Subject, case: str, tally: Tally, args: argparse.Namespace) -> dict:
    """Applies `case`, warms up 1 s, measures, and adds what its telemetry did to `tally`."""
    subject.apply("off" if case == "tap" else case)
    tally.requests += run_wrk(subject.url, args.connections, 1)["requests"]
    log = subject.log(case)
    tap = None
    if case == "tap":
        tap = TapReader(subject.admin)
        tap.start()
        tap.opened.wait(15)
    pid = subject.proc.pid
    before, switches = cpu_seconds(pid), context_switches(pid)
    r = run_wrk(subject.url, args.connections, args.duration)
    r["cpu_us_per_req"] = (cpu_seconds(pid) - before) / max(r["requests"], 1) * 1e6
    r["switches_per_req"] = (context_switches(pid) - switches) / max(r["requests"], 1)
    tally.requests += r["requests"]
    if tap is not None:
        tap.stop(subject.url)
        tally.tap_summaries += tap.summaries
        tally.tap_requests += r["requests"]
        tally.tap_dropped = int(metric(subject.metrics(), "tap_dropped_total"))
        if tap.error:
            tally.errors.append(tap.error)
    # A writer and an exporter start afresh each time their case is applied, so their counts
    # are read now, before the next config drops them.
    if log is not None:
        text = settled(subject, ("access_log_lines_total",))
        tally.log_lines += int(metric(text, "access_log_lines_total"))
        tally.log_dropped_behind += int(metric(text, "access_log_dropped_total", reason="behind"))
        tally.log_dropped_write += int(metric(text, "access_log_dropped_total", reason="write"))
        tally.log_bytes += log.stat().st_size if log.exists() else 0
        if log.exists():
            os.truncate(log, 0)  # opened for appending: the writer goes on (logrotate's copytruncate)
    if "otlp" in telemetry_config(case, subject.tmp, subject.sink).get("tracing", {}):
        text = settled(subject, ("trace_spans_exported_total", "trace_spans_dropped_total"))
        tally.spans_exported += int(metric(text, "trace_spans_exported_total"))
        tally.spans_dropped_queue += int(metric(text, "trace_spans_dropped_total", reason="queue"))
        tally.spans_dropped_export += int(metric(text, "trace_spans_dropped_total", reason="export"))
    return r


def problems_of(case: str, r: dict, t: Tally) -> list[str]:
    """What makes this case's numbers untrustworthy: the run did not do what it measures."""
    found = [f"{case}: {e}" for e in t.errors]
    if r["errors"]:
        found.append(f"{case}: {r['errors']} errors (non-2xx/3xx answers or socket errors)")
    config = telemetry_config(case, Path("."), "sink")
    if "access_log" in config and t.log_lines <= 0:
        found.append(f"{case}: the access log got no line ({t.log_bytes} bytes)")
    if "otlp" in config.get("tracing", {}) and t.spans_exported <= 0:
        found.append(f"{case}: no span exported (trace_spans_exported_total stayed 0)")
    if case == "tap" and t.tap_summaries <= 0:
        found.append("tap: the reader got no summary")
    return found


def what_it_did(case: str, t: Tally) -> Optional[str]:
    """One line on what the case's telemetry did over the whole run."""
    if case == "tap":
        seen = t.tap_summaries / max(t.tap_requests, 1)
        return (
            f"tap: the reader got {t.tap_summaries} summaries for {t.tap_requests} requests measured "
            f"({seen:.0%}); tap_dropped_total {t.tap_dropped}"
            + (" (the reader fell behind; requests did not wait for it)" if t.tap_dropped else "")
        )
    config = telemetry_config(case, Path("."), "sink")
    parts = []
    if "access_log" in config:
        dropped = t.log_dropped_behind + t.log_dropped_write
        parts.append(
            f"{t.log_lines} lines written ({t.log_bytes / 1e6:.1f} MB), {dropped} dropped "
            f"(behind {t.log_dropped_behind}, write {t.log_dropped_write})"
        )
    if "otlp" in config.get("tracing", {}):
        dropped = t.spans_dropped_queue + t.spans_dropped_export
        note = f"{t.spans_exported} spans exported, {dropped} dropped (queue {t.spans_dropped_queue}, "
        note += f"export {t.spans_dropped_export})"
        if dropped:
            note += ": the sink did not keep up, so those spans cost less than exported ones would"
        parts.append(note)
    if not parts:
        return None
    return f"{case}: " + "; ".join(parts) + f", for {t.requests} requests (warm-ups included)"


def describe_build() -> str:
    version = subprocess.run(
        [sys.executable, "-m", "meshcore.cli", "--version"], capture_output=True, text=True
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return f"{version} (commit {commit})" if commit else version


def report(args: argparse.Namespace, build: str, results: dict, tallies: dict) -> tuple[str, list[str]]:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        f"# Telemetry cost per request ({args.connections} connections, {args.duration}s per measurement, "
        f"{args.rounds} rounds; one proxy, its telemetry switched by PUT /config; each case measured "
        "between two measurements of `off`; workers = 1 on CPU 1; nginx, wrk, the span sink and the tap "
        "reader on CPU 0)",
        "",
        f"`{command}` with {build}",
        "",
        "| case | req/s | req/s vs off | p50 ms | p99 ms | CPU µs/req | added CPU µs/req "
        "| ctx switches/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['ratio']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_us_per_req']:.1f} | {r['added_cpu_us']:+.1f} | {r['switches_per_req']:.2f} | "
            f"{r['errors']} |"
        )
    lines += [
        "",
        'req/s, latency and CPU are medians over the rounds; "req/s vs off" and "added CPU" are medians of '
        "each round's comparison of the case with the mean of the two `off` measured on either side of it. "
        "CPU µs/req is the proxy's own (its "
        "access log writer, span exporter and admin API threads included); ctx switches/req, its threads' "
        "context switches, voluntary or not. The span sink and the tap reader share CPU 0 with wrk and "
        "nginx, so their own CPU lowers the req/s of `tracing`, `all` and `tap` a little whatever the proxy "
        "does.",
        "",
        f"Against the issue's bar (req/s at least {BAR:.2f} of `off`):",
        "",
    ]
    for name, r in results.items():
        if name == "off":
            continue
        verdict = "meets the 10 % bar" if r["meets_bar"] else "does NOT meet the 10 % bar"
        if name not in HELD_TO_BAR:
            verdict += " (an open tap is not held to it)"
        lines.append(f"- {name}: {r['ratio']:.2f} of off: {verdict}")
    did = [line for name in results if (line := what_it_did(name, tallies[name]))]
    if did:
        lines += ["", "What the telemetry did over the run:", ""] + [f"- {line}" for line in did]
    problems = [p for name, r in results.items() for p in problems_of(name, r, tallies[name])]
    if problems:
        lines += ["", "**Checks failed** (these numbers do not measure what they claim):", ""]
        lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n", problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--connections", type=int, default=50, help="wrk's connections (default 50)")
    ap.add_argument("--quick", action="store_true", help="2 s, 1 round: check that the script runs")
    ap.add_argument(
        "--cases",
        default=",".join(c for c in CASES if c != "off"),
        help="the cases measured against off, comma-separated (default: every one)",
    )
    ap.add_argument("--out", help="where the report goes (default bench/results, bench/out with --quick)")
    args = ap.parse_args()
    others = [c for c in args.cases.split(",") if c and c != "off"]
    if unknown := set(others) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))} (known: {', '.join(CASES)})")
    if args.quick:
        args.duration, args.rounds = 2, 1
    out = Path(args.out) if args.out else HERE / ("out" if args.quick else "results")
    out.mkdir(parents=True, exist_ok=True)
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {0})  # the tap reader thread runs on the load generator's CPU
    build = describe_build()
    rounds: dict[str, list[dict]] = {case: [] for case in ["off", *others]}
    pairs: dict[str, list[tuple[float, float]]] = {case: [] for case in others}  # (req/s, CPU) ratios
    tallies = {case: Tally() for case in rounds}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        h1, h2, sink_port = free_port(), free_port(), free_port()
        nginx = start_nginx(tmp, h1, h2)
        sink = start_span_sink(tmp, sink_port)
        subject: Optional[Subject] = None
        try:
            subject = start_subject(tmp, h1, f"127.0.0.1:{sink_port}")
            run_wrk(subject.url, args.connections, 2)  # warm-up
            for i in range(args.rounds):
                order = others[i % len(others) :] + others[: i % len(others)]
                # Every case between two measurements of `off`, each `off` shared by its two
                # neighbours: this machine's speed drifts by more than the bar over minutes, and
                # a case compared with the mean of the `off` on either side of it sees that drift
                # cancel, if it is steady over the pair's seconds.
                before = measure(subject, "off", tallies["off"], args)
                rounds["off"].append(before)
                for case in order:
                    got = measure(subject, case, tallies[case], args)
                    after = measure(subject, "off", tallies["off"], args)
                    rounds[case].append(got)
                    rounds["off"].append(after)
                    off_rps = (before["rps"] + after["rps"]) / 2
                    off_cpu = (before["cpu_us_per_req"] + after["cpu_us_per_req"]) / 2
                    pairs[case].append((got["rps"] / off_rps, got["cpu_us_per_req"] - off_cpu))
                    before = after
                print(
                    f"round {i + 1}/{args.rounds}: "
                    + ", ".join(f"{c} {pairs[c][-1][0]:.2f}" for c in others),
                    flush=True,
                )
        finally:
            if subject is not None:
                subject.proc.send_signal(signal.SIGTERM)
                subject.proc.wait(15)
            sink.terminate()
            sink.wait(5)
            sink_said = sink_took(tmp)
            nginx.terminate()
            nginx.wait(5)
    results = {case: median_measures(rs) for case, rs in rounds.items()}
    for case, r in results.items():
        r["ratio"] = statistics.median(p[0] for p in pairs[case]) if case != "off" else 1.0
        r["added_cpu_us"] = statistics.median(p[1] for p in pairs[case]) if case != "off" else 0.0
        r["meets_bar"] = r["ratio"] >= BAR
    text, problems = report(args, build, results, tallies)
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
                "telemetry": {case: vars(t) for case, t in tallies.items()},
                "rounds": rounds,
                "pairs": pairs,
                "problems": problems,
            },
            indent=2,
        )
    )
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
