"""The control plane's fleet table: each proxy's last report, when it was seen, whether its stream
is open, and its golden metrics over time; and the config versions the fleet may run.

While one process replaces another under the same id (an upgrade), both report for a moment: the
one that started later speaks for the proxy (its version, command, config), and the draining one's
responses still count.

A proxy reports its responses since its previous report; the table keeps those samples (the last
`KEEP_SECONDS`) stamped with the time they arrived, so that any window (a rollout wave's bake, the
last half minute for `mesh status`) is the sum of the samples that arrived in it. Success rate and
p99 of a window come from the summed latency buckets, as Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from ..histogram import quantile
from .protocol import ConfigState, Golden, ProxyInfo, Report, UpgradeState

__all__ = ["ConfigVersion", "Fleet", "Window", "quantile"]

KEEP_SECONDS = 600.0
STATUS_WINDOW = 30.0  # rps, success rate and p99 in `mesh status` are over this much


@dataclass
class Window:
    """Responses summed over some proxies and some time."""

    responses: int = 0
    failures: int = 0
    seconds: float = 0.0
    buckets_ms: tuple[float, ...] = ()
    buckets: list[int] = field(default_factory=list)

    def add(self, sample: Golden) -> None:
        if not self.buckets_ms:
            self.buckets_ms, self.buckets = sample.buckets_ms, [0] * len(sample.buckets)
        if sample.buckets_ms != self.buckets_ms:
            return  # another meshcore's buckets: not summable with these
        self.responses += sample.responses
        self.failures += sample.failures
        self.buckets = [a + b for a, b in zip(self.buckets, sample.buckets)]

    def merge(self, other: Window) -> None:
        if other.buckets_ms:
            self.add(
                Golden(other.seconds, other.responses, other.failures, other.buckets_ms, tuple(other.buckets))
            )

    @property
    def success_rate(self) -> Optional[float]:
        return None if self.responses == 0 else 1 - self.failures / self.responses

    @property
    def error_rate(self) -> Optional[float]:
        return None if self.responses == 0 else self.failures / self.responses

    def p(self, q: float) -> Optional[float]:
        return quantile(q, self.buckets_ms, self.buckets) if self.buckets_ms else None

    def summary(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "failures": self.failures,
            "success_rate": self.success_rate,
            "p50_ms": self.p(0.5),
            "p99_ms": self.p(0.99),
        }


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    text: str
    format: str
    created_at: float
    source: str  # where it came from: the file name the operator gave

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "format": self.format,
            "bytes": len(self.text.encode()),
            "created_at": self.created_at,
            "source": self.source,
        }


@dataclass
class _Entry:
    proxy: ProxyInfo
    identity: Optional[str]
    config: ConfigState = field(default_factory=ConfigState)
    upgrade: UpgradeState = field(default_factory=UpgradeState)
    seen: float = 0.0  # monotonic
    seen_at: float = 0.0  # wall clock
    reports: int = 0
    streams: int = 0
    # (arrived, the reporting process's pid, its metrics): a process being replaced reports on
    # while it drains, under the same id.
    samples: deque[tuple[float, Optional[int], Golden]] = field(default_factory=deque)


def _older(proxy: ProxyInfo, than: ProxyInfo) -> bool:
    """`proxy` is a process that started before `than`'s, under the same id: one it replaced."""
    return (
        proxy.pid != than.pid
        and proxy.started_at is not None
        and than.started_at is not None
        and proxy.started_at < than.started_at
    )


class IdentityMismatch(Exception):
    """A proxy id already reported or subscribed under another identity."""


class Fleet:
    """Used from the server's event loop only: no locks."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._configs: dict[int, ConfigVersion] = {}

    # -- what proxies tell

    def _entry(self, proxy: ProxyInfo, identity: Optional[str]) -> _Entry:
        entry = self._entries.get(proxy.id)
        if entry is None:
            entry = self._entries[proxy.id] = _Entry(proxy, identity)
        elif entry.identity != identity and entry.identity is not None:
            raise IdentityMismatch(
                f"proxy id {proxy.id!r} belongs to {entry.identity}, not {identity or 'a plain connection'}"
            )
        entry.identity = identity
        return entry

    def subscribed(self, proxy: ProxyInfo, identity: Optional[str]) -> None:
        # Only reports say who the proxy is now: a process taking over subscribes before it is
        # the proxy, and reports only once it is (it may yet fail, and the old one serve on).
        self._entry(proxy, identity).streams += 1

    def unsubscribed(self, proxy_id: str) -> None:
        entry = self._entries.get(proxy_id)
        if entry is not None:
            entry.streams = max(0, entry.streams - 1)

    def report(self, report: Report, identity: Optional[str], now: Optional[float] = None) -> None:
        entry = self._entry(report.proxy, identity)
        now = time.monotonic() if now is None else now
        # Not from a process that has been replaced (the first report is taken: an entry made by a
        # subscription says nothing yet).
        if entry.reports == 0 or not _older(report.proxy, entry.proxy):
            entry.proxy, entry.config, entry.upgrade = report.proxy, report.config, report.upgrade
        entry.seen, entry.seen_at = now, time.time()
        entry.reports += 1
        entry.samples.append((now, report.proxy.pid, report.metrics))
        while entry.samples and entry.samples[0][0] < now - KEEP_SECONDS:
            entry.samples.popleft()

    # -- reading

    def ids(self, *, subscribed_only: bool = False) -> list[str]:
        return sorted(i for i, e in self._entries.items() if e.streams or not subscribed_only)

    def proxy(self, proxy_id: str) -> Optional[ProxyInfo]:
        entry = self._entries.get(proxy_id)
        return entry.proxy if entry is not None else None

    def upgrade_of(self, proxy_id: str) -> UpgradeState:
        entry = self._entries.get(proxy_id)
        return entry.upgrade if entry is not None else UpgradeState()

    def config_of(self, proxy_id: str) -> ConfigState:
        entry = self._entries.get(proxy_id)
        return entry.config if entry is not None else ConfigState()

    def last_seen(self, proxy_id: str) -> float:
        """When (monotonic) its last report arrived; 0 if never."""
        entry = self._entries.get(proxy_id)
        return entry.seen if entry is not None else 0.0

    def window(
        self,
        proxy_ids: Iterable[str],
        since: float,
        until: Optional[float] = None,
        *,
        current_only: bool = False,
    ) -> Window:
        """Responses reported by these proxies in reports that arrived after `since` (monotonic).
        `current_only`: only those of each proxy's current process, not of one it replaced that
        still drains (a rollout judges the new version by its own answers)."""
        until = time.monotonic() if until is None else until
        out = Window(seconds=max(0.0, until - since))
        for proxy_id in proxy_ids:
            entry = self._entries.get(proxy_id)
            if entry is None:
                continue
            for at, pid, sample in entry.samples:
                if since < at <= until and (not current_only or pid == entry.proxy.pid):
                    out.add(sample)
        return out

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for proxy_id in [
            i for i, e in self._entries.items() if not e.streams and e.seen < now - KEEP_SECONDS
        ]:
            del self._entries[proxy_id]  # gone for good (a restarted proxy comes back under a new id)
        rows = []
        for proxy_id in sorted(self._entries):
            e = self._entries[proxy_id]
            recent = self.window([proxy_id], now - STATUS_WINDOW, now)
            covered = min(
                STATUS_WINDOW, sum(s.window_s for at, _, s in e.samples if at > now - STATUS_WINDOW)
            )
            rows.append(
                {
                    "id": proxy_id,
                    "identity": e.identity,
                    "version": e.proxy.version,
                    "pid": e.proxy.pid,
                    "command": None if e.proxy.command is None else list(e.proxy.command),
                    "upgrade": e.upgrade.to_wire(),
                    "zone": e.proxy.zone,
                    "cluster": e.proxy.cluster,
                    "subscribed": e.streams > 0,
                    "config": e.config.to_wire(),
                    "reports": e.reports,
                    "last_seen_s": None if not e.reports else round(now - e.seen, 3),
                    "last_seen_at": e.seen_at or None,
                    "rps": recent.responses / covered if covered > 0 else 0.0,
                    **recent.summary(),
                }
            )
        return rows

    # -- config versions

    def add_config(self, text: str, fmt: str, source: str) -> ConfigVersion:
        version = max(self._configs, default=0) + 1
        config = self._configs[version] = ConfigVersion(version, text, fmt, time.time(), source)
        return config

    def config(self, version: int) -> Optional[ConfigVersion]:
        return self._configs.get(version)

    def configs(self) -> list[ConfigVersion]:
        return [self._configs[v] for v in sorted(self._configs)]
