"""Per-hook numbers behind plugin_errors_total and plugin_duration_seconds, by plugin and phase.

Python counts, since it runs the hooks; the core writes them as Prometheus text with its other
families (`_core.ProxyCore.metrics`), so that every label value is escaped in one place."""

from __future__ import annotations

import bisect
import threading

from .._core import PLUGIN_DURATION_BUCKETS

__all__ = ["BUCKETS", "HookCounts", "HookStats"]

# Upper bounds in seconds of plugin_duration_seconds; the core owns them, as it writes the family.
BUCKETS: tuple[float, ...] = PLUGIN_DURATION_BUCKETS

# (plugin, phase, errors, calls per bucket (not cumulative), sum of seconds, calls)
HookCounts = tuple[str, str, int, list[int], float, int]


class _Hook:
    __slots__ = ("buckets", "count", "errors", "seconds")

    def __init__(self) -> None:
        self.errors = 0
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.seconds = 0.0


class HookStats:
    """Counts failed hooks and times every hook; safe to update from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._hooks: dict[tuple[str, str], _Hook] = {}

    def _hook(self, plugin: str, phase: str) -> _Hook:
        hook = self._hooks.get((plugin, phase))
        if hook is None:
            hook = self._hooks[(plugin, phase)] = _Hook()
        return hook

    def observe(self, plugin: str, phase: str, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS, seconds)  # the first bound >= seconds; past the last: none
        with self.lock:
            hook = self._hook(plugin, phase)
            if i < len(BUCKETS):
                hook.buckets[i] += 1
            hook.count += 1
            hook.seconds += seconds

    def error(self, plugin: str, phase: str) -> None:
        with self.lock:
            self._hook(plugin, phase).errors += 1

    def snapshot(self) -> list[HookCounts]:
        """Every hook's numbers as plain data, for the core to render."""
        with self.lock:
            return [
                (plugin, phase, h.errors, list(h.buckets), h.seconds, h.count)
                for (plugin, phase), h in self._hooks.items()
            ]
