"""A hypercorn backend that speaks HTTP/1.1 and HTTP/2 (prior knowledge, or by ALPN over TLS
on Python's OpenSSL), and reports which protocol version and authority it saw."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    info = {
        "http_version": scope["http_version"],
        "path": scope["path"],
        "headers": headers,
        "body_len": len(body),
    }
    out = json.dumps(info).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


class AsgiBackend:
    def __init__(self, tls: tuple[str, str] | None = None):
        """`tls`: (certificate chain file, key file) to serve HTTPS."""
        self._tls = tls
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.addr = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "hypercorn did not start"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        config = Config()
        config.bind = [self.addr]
        if self._tls is not None:
            config.certfile, config.keyfile = self._tls
        config.loglevel = "ERROR"
        config.accesslog = None
        # Hypercorn closes a connection after 1,000 requests by default; in-flight streams
        # then fail. Tests here are about the proxy, so keep connections open.
        config.keep_alive_max_requests = 1_000_000

        async def main():
            self._stop = asyncio.Event()
            task = asyncio.ensure_future(serve(app, config, shutdown_trigger=self._stop.wait))
            for _ in range(200):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.02)
            self._ready.set()
            await task

        self._loop.run_until_complete(main())

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
