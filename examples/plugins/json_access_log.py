"""A JSON access log, one line per request, written off the request path (on_log).

Writes to the file named by MESHCORE_ACCESS_LOG, or to standard error.
"""

import json
import os
import sys
import threading


class Plugin:
    def __init__(self):
        path = os.environ.get("MESHCORE_ACCESS_LOG")
        self._out = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115 - lives with the plugin
        self._lock = threading.Lock()

    def on_log(self, summary):
        fields = (
            "method",
            "authority",
            "path",
            "status",
            "route",
            "service",
            "endpoint",
            "zone",
            "duration_ms",
            "ttfb_ms",
            "response_bytes",
            "retried",
            "identity",
        )
        line = json.dumps({k: summary.get(k) for k in fields}, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
