#!/usr/bin/env python3
"""A minimal OTLP/HTTP span sink for benchmarks: takes `POST /v1/traces` bodies over keep-alive
HTTP/1.1 and answers 200 with an empty body (an empty ExportTraceServiceResponse: no partial
rejection). It does not decode what it gets; it counts POSTs and bytes and prints them as one JSON
line when stopped (SIGTERM or SIGINT).

    python bench/span_sink.py PORT
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"posts": 0, "bytes": 0, "refused": 0}
lock = threading.Lock()


class SpanSink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector serves an exporter

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        ok = self.path == "/v1/traces"
        with lock:
            counts["posts" if ok else "refused"] += 1
            counts["bytes"] += len(body)
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # one line a POST would cost the sink CPU
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), SpanSink)
    server.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
