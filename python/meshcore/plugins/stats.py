"""Per-hook metrics: plugin_errors_total and plugin_duration_seconds, by plugin and phase,
rendered as Prometheus text next to the core's families."""

from __future__ import annotations

import threading

__all__ = ["BUCKETS", "HookStats"]

# Seconds; the same buckets as Prometheus client defaults, shifted down for in-process hooks.
BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


def _label(value: str) -> str:
    """A Prometheus label value, escaped by the same rule as the core's metrics."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class HookStats:
    """Counts failed hooks and times every hook; safe to update from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: dict[tuple[str, str], int] = {}
        # Per (plugin, phase): a count per bucket (not cumulative), then the total count and sum.
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, plugin: str, phase: str, seconds: float) -> None:
        key = (plugin, phase)
        with self.lock:
            h = self.durations.get(key)
            if h is None:
                h = self.durations[key] = [0.0] * (len(BUCKETS) + 2)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    h[i] += 1
                    break
            h[-2] += 1
            h[-1] += seconds

    def error(self, plugin: str, phase: str) -> None:
        with self.lock:
            self.errors[(plugin, phase)] = self.errors.get((plugin, phase), 0) + 1

    def render(self) -> str:
        out = [
            "# HELP plugin_errors_total Plugin hooks that raised or timed out.",
            "# TYPE plugin_errors_total counter",
        ]
        with self.lock:
            for (plugin, phase), n in sorted(self.errors.items()):
                out.append(f'plugin_errors_total{{plugin="{_label(plugin)}",phase="{phase}"}} {n}')
            out += [
                "# HELP plugin_duration_seconds Time spent in plugin hooks.",
                "# TYPE plugin_duration_seconds histogram",
            ]
            for (plugin, phase), h in sorted(self.durations.items()):
                labels = f'plugin="{_label(plugin)}",phase="{phase}"'
                cumulative = 0.0
                for bound, in_bucket in zip(BUCKETS, h):
                    cumulative += in_bucket
                    out.append(f'plugin_duration_seconds_bucket{{{labels},le="{bound}"}} {int(cumulative)}')
                out.append(f'plugin_duration_seconds_bucket{{{labels},le="+Inf"}} {int(h[-2])}')
                out.append(f"plugin_duration_seconds_sum{{{labels}}} {h[-1]}")
                out.append(f"plugin_duration_seconds_count{{{labels}}} {int(h[-2])}")
        return "\n".join(out) + "\n"
