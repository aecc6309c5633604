"""`meshcore top ADMIN`: a live table of a running proxy's routes and services (requests per second,
success rate, p50/p95/p99 latency over the last interval, and requests in all), from its admin
API's `/stats` sampled every `--interval` seconds; sortable with keys. `--once` prints one table
(or `--json`, the rows) from two samples an interval apart, for scripts."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from typing import Any, NoReturn

from .admin_client import add_admin_arguments, admin_base, admin_token
from .golden import KINDS, SORT_KEYS, sort_rows
from .sampler import AdminUnavailable, Sampler

__all__ = ["add_top_command"]


def once(sampler: Sampler, args: argparse.Namespace) -> int:
    sampler.sample()
    time.sleep(args.interval)  # the interval the numbers are over
    seconds = sampler.seconds
    rows = sampler.sample()
    if args.json:
        out: dict[str, Any] = {"admin": args.admin, "seconds": round(seconds, 3), "sort": args.sort}
        out.update({kind: [r.to_json() for r in sort_rows(rows[kind], args.sort)] for kind in KINDS})
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console

    from .top_screen import Screen, render

    screen = Screen(args.admin, args.interval, args.sort, keys=False, rows=rows)
    Console().print(render(screen, footer=False))
    return 0


def _terminated(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(0)  # unwinds like Ctrl-C: the screen and the terminal's settings come back


def _run(args: argparse.Namespace) -> int:
    def fail(message: str, code: int) -> int:
        print(f"meshcore top: {message}", file=sys.stderr)
        return code

    if args.json and not args.once:
        return fail("--json prints one sample's rows: it needs --once", 2)
    if not args.once and not sys.stdout.isatty():
        return fail("the live table needs a terminal; for scripts, --once (with --json for JSON)", 2)
    try:
        token = admin_token(args)
    except ValueError as e:
        return fail(str(e), 2)
    sampler = Sampler(f"{admin_base(args.admin)}/stats", token, timeout=max(2.0, args.interval))
    try:
        if args.once:
            return once(sampler, args)
        rows = sampler.sample()  # an admin API not there at the start is an error, not a screen
        from rich.console import Console

        from .keys import Keys
        from .top_screen import Screen, live

        signal.signal(signal.SIGTERM, _terminated)
        with Keys(sys.stdin) as keys:
            screen = Screen(args.admin, args.interval, args.sort, keys=keys.interactive, rows=rows)
            return live(sampler, screen, keys, Console())
    except AdminUnavailable as e:
        return fail(str(e), 1)
    except KeyboardInterrupt:
        return 130 if args.once else 0


def _interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0.05 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"seconds between 0.05 and 3600, not {value!r}")
    return seconds


def add_top_command(sub: Any) -> None:
    p = sub.add_parser(
        "top", help="a live table of a running proxy's routes and services (req/s, success, latency)"
    )
    add_admin_arguments(p)
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between samples (default 1)")
    p.add_argument(
        "--sort",
        choices=list(SORT_KEYS),
        default="rps",
        help="busiest (rps), least successful (success), slowest p99 (p99) first, or by name; "
        "keys r, s, l, n change it while running",
    )
    p.add_argument("--once", action="store_true", help="print one table from two samples an interval apart")
    p.add_argument("--json", action="store_true", help="with --once: the rows as JSON")
    p.set_defaults(func=_run)
