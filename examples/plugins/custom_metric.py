"""A custom metric: responses by method and status class, added to the proxy's /metrics."""

import threading
from collections import Counter


class Plugin:
    def __init__(self):
        self._counts = Counter()
        self._lock = threading.Lock()

    def on_log(self, summary):
        key = (summary["method"], f"{summary['status'] // 100}xx")
        with self._lock:
            self._counts[key] += 1

    def metrics(self):
        lines = [
            "# HELP plugin_responses_by_class_total Responses by method and status class.",
            "# TYPE plugin_responses_by_class_total counter",
        ]
        with self._lock:
            for (method, klass), n in sorted(self._counts.items()):
                lines.append(f'plugin_responses_by_class_total{{method="{method}",class="{klass}"}} {n}')
        return "\n".join(lines) + "\n"
