"""A small HTTP/1.1 backend for demos and tests: it names itself and its zone,
echoes bodies (streaming, chunked or not), streams downloads, and can be told
to be slow or to fail.

    GET  /anything        -> "hello from NAME (ZONE) path=/anything"
    GET  /delay/MS        -> answers after MS milliseconds
    GET  /status/CODE     -> answers with that status
    GET  /bytes/N         -> streams N bytes
    GET  /drip/N/MS       -> streams N small chunks, MS milliseconds apart
    GET  /headers         -> the request headers as JSON
    POST /echo            -> streams the request body back
    POST /count           -> the number of body bytes received
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

__all__ = ["Backend"]

_CHUNK = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, _CHUNK))
                    if not data:
                        return
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-backend", self.server.name)
        self.send_header("x-zone", self.server.zone)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, chunks: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-backend", self.server.name)
        self.send_header("x-zone", self.server.zone)
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def _handle(self) -> None:
        self.server.count()
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if self.server.fail_status:
            for _ in self._body_chunks():
                pass
            self._reply(self.server.fail_status, b"failing on purpose\n")
            return
        if self.server.delay:
            time.sleep(self.server.delay)
        if self.server.work is not None:
            # Limited capacity: requests queue for a worker slot, so latency grows with load.
            seconds, slots = self.server.work
            with slots:
                time.sleep(seconds)
        if parts[0] == "echo":
            self._stream(self._body_chunks())
            return
        if parts[0] == "count":
            n = sum(len(c) for c in self._body_chunks())
            self._reply(200, b"%d" % n)
            return
        for _ in self._body_chunks():
            pass
        if parts[0] == "delay" and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000)
        if parts[0] == "status" and len(parts) > 1:
            self._reply(int(parts[1]), f"status {parts[1]}\n".encode())
        elif parts[0] == "bytes" and len(parts) > 1:
            total = int(parts[1])
            block = b"x" * _CHUNK

            def gen() -> Iterator[bytes]:
                left = total
                while left > 0:
                    n = min(left, _CHUNK)
                    left -= n
                    yield block[:n]

            self._stream(gen())
        elif parts[0] == "drip" and len(parts) > 2:
            count, gap = int(parts[1]), int(parts[2]) / 1000

            def drip() -> Iterator[bytes]:
                for i in range(count):
                    if i:
                        time.sleep(gap)
                    yield b"drop %d\n" % i

            self._stream(drip())
        elif parts[0] == "headers":
            seen: dict[str, str] = {}
            for k, v in self.headers.items():
                seen[k.lower()] = f"{seen[k.lower()]}, {v}" if k.lower() in seen else v
            self._reply(200, json.dumps(seen).encode(), "application/json")
        else:
            name, zone = self.server.name, self.server.zone
            self._reply(200, f"hello from {name} ({zone}) path={path}\n".encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    name = "backend"
    zone = "unknown"
    delay = 0.0
    fail_status = 0
    requests = 0
    connections = 0
    work: Optional[tuple[float, threading.Semaphore]] = None

    def server_activate(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        super().server_activate()
        # serve_forever accepts after its selector says a connection waits; a
        # blocking accept then hangs (and stop() with it) if the connection is
        # gone by the time it is taken. Non-blocking, it just returns.
        self.socket.setblocking(False)

    def get_request(self):  # type: ignore[no-untyped-def]
        conn, addr = self.socket.accept()
        conn.setblocking(True)  # handlers read and write blocking, as usual
        return conn, addr

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        with self._lock:
            self._open.add(request)
            self.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Closes every open client connection, as a crashed process would."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Backend:
    """Runs in a background thread until `stop()`."""

    def __init__(self, name: str = "backend", zone: str = "unknown", host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), _Handler)
        self._server.name = name
        self._server.zone = zone
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"backend-{name}", daemon=True
        )
        self._thread.start()

    @property
    def name(self) -> str:
        return self._server.name

    @property
    def zone(self) -> str:
        return self._server.zone

    @property
    def addr(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def requests(self) -> int:
        return self._server.requests

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._server.connections

    def set_delay(self, seconds: float) -> None:
        self._server.delay = seconds

    def set_capacity(self, service_time: float, workers: int) -> None:
        """Each request takes `service_time` seconds of one of `workers` slots."""
        self._server.work = (service_time, threading.Semaphore(workers))

    def set_failing(self, status: Optional[int]) -> None:
        self._server.fail_status = status or 0

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stops listening and cuts every open connection (like a crash)."""
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m meshcore.backend HOST:PORT [--name N] [--zone Z]`: serves until interrupted."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m meshcore.backend", description=__doc__.splitlines()[0])
    p.add_argument("bind", help="HOST:PORT to listen on")
    p.add_argument("--name", default="backend")
    p.add_argument("--zone", default="unknown")
    p.add_argument("--fail", type=int, metavar="STATUS", help="answer every request with this status")
    args = p.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    b = Backend(args.name, args.zone, host=host.strip("[]"), port=int(port))
    b.set_failing(args.fail)
    print(f"backend {args.name} on {b.addr}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


if __name__ == "__main__":
    main()
