"""Verified change: each route's golden metrics before and after a reload, and the verdict.

After a reload to version N, the `Verifier` compares each route's success rate and p99 over the
`verify` window after the reload with a window of the same length before it (as Flagger's and Argo
Rollouts' analysis do), and calls `on_bad(N, reason, message)` at most once if the change made them
worse past the policy's limits. The caller (the Lifecycle) rolls back and counts
`config_rollback_total{reason}`; reason is "verify-success-rate" or "verify-p99".

The numbers
- Success rate = 1 - failures / responses; failures are what the proxy classifies as failures (5xx,
  connect errors, timeouts, gRPC errors).
- p99 is Prometheus' histogram_quantile(0.99) over the `response_latency_ms` buckets: the bucket
  holding the 99th percentile, interpolated linearly inside it (the first bucket starts at 0; a
  percentile slower than the last bound is the last bound).
- The window after runs from the reload to now. The window before has the same length and ends at
  the reload; it comes from a ring of `route_stats()` samples taken once a second (at most
  2 x verify + 5 of them) and is shorter if the proxy has not run that long. It starts no earlier
  than the Verifier's first sample: counts from before start() may be of any age. A count that went down
  (a route removed and added back) counts from zero, as Prometheus' rate() does.

The verdict, per route with at least `min_requests` responses after the reload
- "verify-success-rate": the success rate after is below `min_success_rate` and below the rate
  before. A route already under the floor before the reload is not the reload's fault: it counts
  only if clearly worse than it was (the upper confidence bound of the rate after is below the rate
  before), so that noise on a route that was failing anyway does not undo an unrelated change.
- "verify-p99": the p99 after is above `max_p99_ratio` x the p99 before. Judged only when both
  windows have at least `min_requests` responses.
- A route with fewer than `min_requests` responses before (new in this version, or idle until now)
  is judged on the success-rate floor alone: there is nothing sound to compare with.
- A route with fewer responses after is not judged: too little evidence either way.
- When several routes or both limits are crossed, the reason is the success rate's (failures cost
  more than slowness) and the message names every route that crossed a limit.

When
- Early, at each sample: a limit crossed by a clear margin is reported at once rather than after
  the window, so that a failing change does not keep failing for the rest of it. Clear means that
  even the favourable end of a Wilson score interval (z = 3) crosses: the upper bound of the
  success rate is below the floor (and below the rate before), or the lower bound of the share of
  responses in buckets wholly above the p99 limit is over 1 %. A few unlucky requests at the start
  of the window cannot roll back a good change.
- At the end of the window the plain numbers decide: a limit crossed is a bad version, otherwise
  the version is "verified".
- begin() for a newer version, or cancel(), supersedes the check. on_bad is called on the sampler
  thread, without any lock held, and names the version it judged: the caller ignores a verdict on a
  version that is no longer running.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..config import parse_duration
from ..histogram import quantile

__all__ = [
    "RATE_REASON",
    "P99_REASON",
    "Limits",
    "RouteWindow",
    "Breach",
    "window",
    "quantile",
    "wilson",
    "judge",
    "Verifier",
]

RATE_REASON = "verify-success-rate"
P99_REASON = "verify-p99"
# z of the Wilson score interval behind an early verdict: about 99.9 % one-sided, strict because
# the same window is looked at once a second.
Z = 3.0
PERCENTILE = 0.99

RouteStats = Mapping[str, Any]  # proxy.route_stats(): {"buckets_ms": [...], "routes": {...}}


@dataclass(frozen=True)
class Limits:
    """A ReloadPolicy's numbers, the window in seconds."""

    verify: float
    min_success_rate: float = 0.99
    max_p99_ratio: float = 1.5
    min_requests: int = 20

    @classmethod
    def of(cls, policy: Any) -> Limits:
        """From a `config.ReloadPolicy` (verify a duration such as "30s") or a Limits."""
        return cls(
            verify=parse_duration(policy.verify) / 1000,
            min_success_rate=float(policy.min_success_rate),
            max_p99_ratio=float(policy.max_p99_ratio),
            min_requests=int(policy.min_requests),
        )


@dataclass(frozen=True)
class RouteWindow:
    """One route's responses over a window; `buckets` has one count per bound of `buckets_ms`,
    then one for the responses slower than the last bound."""

    responses: int
    failures: int
    buckets: tuple[int, ...]

    @property
    def success_rate(self) -> Optional[float]:
        return None if self.responses == 0 else 1 - self.failures / self.responses

    def summary(self, bounds: Sequence[float]) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "failures": self.failures,
            "success_rate": self.success_rate,
            "p99_ms": quantile(PERCENTILE, bounds, self.buckets),
        }


@dataclass(frozen=True)
class Breach:
    route: str
    reason: str
    message: str


def window(start: RouteStats, end: RouteStats) -> dict[str, RouteWindow]:
    """Each route's numbers between two route_stats() samples (cumulative counts)."""
    bounds = end["buckets_ms"]
    earlier = start.get("routes", {})
    out: dict[str, RouteWindow] = {}
    for name, now in end["routes"].items():
        responses, failures, buckets = now["responses"], now["failures"], list(now["buckets"])
        then = earlier.get(name)
        if then is not None and then["responses"] <= responses and then["failures"] <= failures:
            responses -= then["responses"]
            failures -= then["failures"]
            buckets = [max(0, a - b) for a, b in zip(buckets, then["buckets"])]
        # Otherwise the counts were reset since `start`: all of them are new.
        if len(buckets) == len(bounds):  # the core keeps no bucket past the last bound
            buckets.append(max(0, responses - sum(buckets)))
        out[name] = RouteWindow(responses, failures, tuple(buckets))
    return out


def _lower_edges(bounds: Sequence[float]) -> list[float]:
    return [0.0, *(float(b) for b in bounds)]


def wilson(hits: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of the proportion hits / n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    spread = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / spread
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / spread
    return max(0.0, centre - half), min(1.0, centre + half)


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _ms(x: float) -> str:
    return f"{x:.3g} ms"


def judge(
    before: Mapping[str, RouteWindow],
    after: Mapping[str, RouteWindow],
    limits: Limits,
    bounds: Sequence[float],
    *,
    final: bool,
) -> list[Breach]:
    """The limits crossed after the reload: every one if `final` (the window is over), else only
    those crossed by a clear margin. Success-rate breaches come first."""
    enough = max(1, limits.min_requests)
    floor = limits.min_success_rate
    rates: list[Breach] = []
    slowness: list[Breach] = []
    for name in sorted(after):
        a = after[name]
        if a.responses < enough:
            continue
        b = before.get(name)
        if b is not None and b.responses < enough:
            b = None
        rate = 1 - a.failures / a.responses
        high = wilson(a.responses - a.failures, a.responses)[1]
        seen = rate if final else high
        if b is None:
            worse = seen < floor
        else:
            was = 1 - b.failures / b.responses
            # Healthy before: under the floor is worse. Already under it: only clearly worse counts.
            worse = seen < floor and seen < was and (was >= floor or high < was)
        if worse:
            compared = f" and {_pct(was)} before" if b is not None else " (no window before to compare)"
            rates.append(
                Breach(
                    name,
                    RATE_REASON,
                    f"route {name!r}: success rate {_pct(rate)} over {a.responses} responses since "
                    f"the reload, below {_pct(floor)}{compared}",
                )
            )
        if b is None:
            continue
        p99_before = quantile(PERCENTILE, bounds, b.buckets)
        p99_after = quantile(PERCENTILE, bounds, a.buckets)
        if p99_before is None or p99_after is None:
            continue
        limit = limits.max_p99_ratio * p99_before
        if final:
            worse = p99_after > limit
        else:
            slow = sum(n for lower, n in zip(_lower_edges(bounds), a.buckets) if lower >= limit)
            worse = wilson(slow, sum(a.buckets))[0] > 1 - PERCENTILE
        if worse:
            slowness.append(
                Breach(
                    name,
                    P99_REASON,
                    f"route {name!r}: p99 {_ms(p99_after)} over {a.responses} responses since the "
                    f"reload, above {limits.max_p99_ratio:g} x {_ms(p99_before)} before",
                )
            )
    return rates + slowness


def _log(message: str) -> None:
    print(f"meshcore: {message}", file=sys.stderr, flush=True)


@dataclass
class _Check:
    """One version under verification."""

    version: int
    baseline: RouteStats  # route_stats() at the reload
    before: dict[str, RouteWindow]
    until: float  # monotonic
    started_at: float  # unix
    state: str = "verifying"  # then "verified", "bad" or "cancelled"
    after: dict[str, RouteWindow] = field(default_factory=dict)
    reason: Optional[str] = None
    message: Optional[str] = None


class Verifier:
    """Samples `route_stats()` once a second and judges each reload against the window before it."""

    def __init__(
        self,
        route_stats: Callable[[], RouteStats],
        policy: Any,
        on_bad: Callable[[int, str, str], None],
        *,
        interval: float = 1.0,
    ) -> None:
        self._route_stats = route_stats
        self._limits = Limits.of(policy)
        self._on_bad = on_bad
        self._interval = interval
        self._ring: deque[tuple[float, RouteStats]] = deque(
            maxlen=2 * math.ceil(self._limits.verify / interval - 1e-9) + 5
        )
        self._cond = threading.Condition()
        self._check: Optional[_Check] = None
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._last_error: Optional[str] = None

    @property
    def limits(self) -> Limits:
        return self._limits

    def start(self) -> None:
        """Takes a first sample (errors from route_stats() raise here) and starts the sampler."""
        stats = self._route_stats()
        with self._cond:
            self._ring.append((time.monotonic(), stats))
        self._thread = threading.Thread(target=self._run, name="meshcore-verify", daemon=True)
        self._thread.start()

    def begin(self, version: int) -> None:
        """A reload to `version` was just applied: judge it over the next `verify` seconds. Any
        check still running is superseded. Errors from route_stats() raise here. Call it after
        start(): the sampler gives the verdicts, and the window before reaches back to start()."""
        stats = self._route_stats()
        now = time.monotonic()
        with self._cond:
            start = self._sample_near(now - self._limits.verify) or stats
            self._ring.append((now, stats))
            self._check = _Check(
                version=version,
                baseline=stats,
                before=window(start, stats),
                until=now + self._limits.verify,
                started_at=time.time(),
            )
            self._cond.notify_all()

    def cancel(self) -> None:
        """A newer reload supersedes the check: no verdict will come for it."""
        with self._cond:
            if self._check is not None and self._check.state == "verifying":
                self._check.state = "cancelled"
            self._cond.notify_all()

    def status(self) -> Optional[dict[str, Any]]:
        """The latest check (running or over), for /config/status; None before the first."""
        with self._cond:
            c = self._check
            if c is None:
                return None
            bounds = c.baseline["buckets_ms"]
            routes = {}
            for name, a in sorted(c.after.items()):
                b = c.before.get(name)
                routes[name] = {
                    "before": b.summary(bounds) if b is not None and b.responses else None,
                    "after": a.summary(bounds),
                }
            return {
                "version": c.version,
                "state": c.state,
                "started_at": c.started_at,
                "until": c.started_at + self._limits.verify,
                "window_s": self._limits.verify,
                "min_success_rate": self._limits.min_success_rate,
                "max_p99_ratio": self._limits.max_p99_ratio,
                "min_requests": self._limits.min_requests,
                "reason": c.reason,
                "message": c.message,
                "routes": routes,
            }

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _sample_near(self, when: float) -> Optional[RouteStats]:
        """The ring's sample taken nearest to `when` (the oldest one if the proxy is younger)."""
        if not self._ring:
            return None
        return min(self._ring, key=lambda s: abs(s[0] - when))[1]

    def _run(self) -> None:
        next_sample = time.monotonic() + self._interval
        while True:
            with self._cond:
                while not self._stopping:
                    due = next_sample
                    if self._check is not None and self._check.state == "verifying":
                        due = min(due, self._check.until)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
            next_sample = max(next_sample + self._interval, time.monotonic())
            try:
                stats = self._route_stats()
            except Exception as e:  # a stopping proxy: the next sample will tell
                if str(e) != self._last_error:
                    _log(f"verify: cannot read the route stats: {e}")
                self._last_error = str(e)
                continue
            self._last_error = None
            verdict = self._observe(stats)
            if verdict is not None:
                try:
                    self._on_bad(*verdict)
                except Exception as e:
                    _log(f"verify: handling the verdict on v{verdict[0]} failed: {type(e).__name__}: {e}")

    def _observe(self, stats: RouteStats) -> Optional[tuple[int, str, str]]:
        """Records a sample and judges the running check with it: (version, reason, message) if
        that version is bad."""
        with self._cond:
            now = time.monotonic()
            self._ring.append((now, stats))
            c = self._check
            if c is None or c.state != "verifying":
                return None
            c.after = window(c.baseline, stats)
            final = now >= c.until
            breaches = judge(c.before, c.after, self._limits, stats["buckets_ms"], final=final)
            if breaches:
                c.state, c.reason = "bad", breaches[0].reason
                c.message = "; ".join(b.message for b in breaches)
                _log(f"config v{c.version} failed verification ({c.reason}): {c.message}")
                return c.version, c.reason, c.message
            if final:
                c.state = "verified"
                judged = sum(1 for a in c.after.values() if a.responses >= max(1, self._limits.min_requests))
                _log(f"config v{c.version} verified over {self._limits.verify:g}s ({judged} routes judged)")
            return None
