"""`meshcore top`'s screen: two tables (routes, services) and a footer with the keys, drawn with
rich, and the live loop that samples, redraws and reads keys."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .golden import KINDS, SORT_KEYS, Row, sort_rows
from .keys import Keys
from .sampler import AdminUnavailable, Sampler

__all__ = ["Screen", "render", "live"]

# Keys while running -> sort key.
SORT_BY_KEY = {"r": "rps", "s": "success", "l": "p99", "n": "name"}


@dataclass
class Screen:
    """What the live view shows."""

    admin: str
    interval: float
    sort: str
    keys: bool  # whether keys are read (stdin is a terminal)
    rows: dict[str, list[Row]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    problem: Optional[str] = None  # why the last sample failed

    def disconnected(self, problem: str) -> None:
        """Totals stay (the last known); the interval's numbers go: they would be stale."""
        self.problem = problem
        self.rows = {
            kind: [Row(r.name, r.requests, r.failures) for r in rows] for kind, rows in self.rows.items()
        }


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _success(value: Optional[float]) -> str:
    # Rounded down: one failure in 100,000 is not "100.00%".
    return "-" if value is None else f"{math.floor(value * 10000) / 100:.2f}%"


def _latency(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


COLUMNS = (("REQ/S", "rps"), ("SUCCESS", "success"), ("P50", None), ("P95", None), ("P99", "p99"))


def table(title: str, rows: list[Row], sort: str) -> Table:
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column("NAME", header_style="bold underline" if sort == "name" else "bold", no_wrap=True)
    for header, key in COLUMNS:
        t.add_column(header, justify="right", header_style="bold underline" if sort == key else "bold")
    t.add_column("REQUESTS", justify="right")
    for r in sort_rows(rows, sort):
        t.add_row(
            r.name,
            _rate(r.rps),
            _success(r.success_rate),
            _latency(r.p50_ms),
            _latency(r.p95_ms),
            _latency(r.p99_ms),
            str(r.requests),
        )
    if not rows:
        t.add_row("(no requests yet)", *["" for _ in range(len(COLUMNS) + 1)])
    return t


def render(screen: Screen, footer: bool = True) -> Group:
    """A line naming the admin API (and why it does not answer), the routes' and the services'
    tables, and a footer with the keys."""
    header = Text(f"meshcore top {screen.admin}", style="bold")
    # Short enough for the narrowest table's title: the reason goes on the line above.
    status = ""
    if screen.problem:
        header.append(f"  disconnected, retrying: {screen.problem}", style="red")
        status = " - disconnected, retrying"
    parts: list[Any] = [
        header,
        table(f"routes{status}", screen.rows["routes"], screen.sort),
        table(f"services{status}", screen.rows["services"], screen.sort),
    ]
    if footer:
        keys = "r req/s  s success  l p99  n name  q quit" if screen.keys else "Ctrl-C quits"
        every = f"every {screen.interval:g}s"
        parts.append(Text(f"sorted by {SORT_KEYS[screen.sort]}, {every}    keys: {keys}", style="dim"))
    return Group(*parts)


def live(sampler: Sampler, screen: Screen, keys: Keys, console: Console) -> int:
    """Until `q` (or Ctrl-C, raised to the caller): a sample each interval, a redraw each sample
    and each key. An admin API gone is shown and asked again each interval."""
    with Live(render(screen), console=console, screen=True, auto_refresh=False) as view:
        due = time.monotonic() + screen.interval
        while True:
            pressed = keys.read(due - time.monotonic())
            if pressed:
                for key in pressed.lower():
                    if key == "q":
                        return 0
                    screen.sort = SORT_BY_KEY.get(key, screen.sort)
                view.update(render(screen), refresh=True)
                continue
            # Late (a slow answer) is not made up for with a burst of samples.
            due = max(due + screen.interval, time.monotonic())
            try:
                screen.rows, screen.problem = sampler.sample(), None
            except AdminUnavailable as e:
                screen.disconnected(str(e))
            view.update(render(screen), refresh=True)
