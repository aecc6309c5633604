"""The admin HTTP API. It runs on its own thread and never sits on the
request path: the proxy answers traffic in Rust whatever happens here."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Protocol

from .errors import BindError

__all__ = ["AdminServer"]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Proxy(Protocol):
    """What the admin API reads and does of the proxy it serves (`meshcore.Proxy`); named
    here so that the two modules do not import each other."""

    @property
    def running(self) -> bool: ...
    @property
    def config(self) -> Any: ...
    def metrics(self) -> str: ...
    def endpoints(self) -> dict[str, Any]: ...
    def plugins(self) -> list[dict[str, Any]]: ...
    def reload_plugins(self) -> dict[str, str]: ...
    def stop(self, grace: float = ...) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, indent=2) + "\n", "application/json")

    def do_GET(self) -> None:
        proxy = self.server.proxy
        path = self.path.split("?", 1)[0]
        if path in ("/live", "/ready"):
            ok = proxy.running
            self._send(200 if ok else 503, "ready\n" if ok else "not ready\n")
        elif path == "/metrics":
            self._send(200, proxy.metrics() if proxy.running else "", PROMETHEUS_TEXT)
        elif path == "/config":
            self._json(200, proxy.config.model_dump(mode="json"))
        elif path == "/endpoints":
            self._json(200, proxy.endpoints() if proxy.running else {"services": []})
        elif path == "/plugins":
            self._json(200, {"plugins": proxy.plugins()})
        else:
            self._send(404, "not found\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if not _is_loopback(self.client_address[0]):
            self._send(403, "admin changes are accepted from loopback only\n")
            return
        if path == "/plugins/reload":
            errors = self.server.proxy.reload_plugins()
            self._json(200 if not errors else 500, {"reloaded": not errors, "errors": errors})
            return
        if path != "/shutdown":
            self._send(404, "not found\n")
            return
        self._send(202, "shutting down\n")
        threading.Thread(target=self.server.proxy.stop, name="meshcore-admin-shutdown", daemon=True).start()


def _is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host)
    # A dual-stack "[::]" socket sees IPv4 callers as ::ffff:a.b.c.d.
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: Proxy


class _Server6(_Server):
    address_family = socket.AF_INET6


class AdminServer:
    def __init__(self, proxy: Proxy, bind: str):
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        server = _Server6 if ":" in host else _Server  # the socket's family follows the address
        try:
            self._server = server((host, int(port)), _Handler)
        except OSError as e:
            raise BindError(f"admin cannot bind {bind}: {e.strerror or e}") from None
        self._server.proxy = proxy
        self._thread = threading.Thread(target=self._server.serve_forever, name="meshcore-admin", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if threading.current_thread() is not self._thread:
            self._server.shutdown()
        self._server.server_close()
