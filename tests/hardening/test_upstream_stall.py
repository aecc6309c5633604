"""Defect 3: one client cannot stall a service for everyone. Streams held
open by one client fill the upstream's SETTINGS_MAX_CONCURRENT_STREAMS on one
connection; the proxy opens another for everyone else."""

from __future__ import annotations

import socket
import threading

import httpx
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.settings import SettingCodes, Settings


class LimitedH2Upstream:
    """An HTTP/2 server allowing `streams` concurrent streams per connection.
    /hang answers its headers and never ends; anything else gets "ok"."""

    def __init__(self, streams: int):
        self.streams = streams
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        # Set before the preface so that its SETTINGS carries the limit.
        h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: self.streams}
        )
        h2.initiate_connection()
        with sock:
            sock.sendall(h2.data_to_send())
            while data := self._recv(sock):
                for event in h2.receive_data(data):
                    if isinstance(event, RequestReceived):
                        path = dict(event.headers)[":path"]
                        h2.send_headers(event.stream_id, [(":status", "200")], end_stream=False)
                        if path != "/hang":
                            h2.send_data(event.stream_id, b"ok", end_stream=True)
                sock.sendall(h2.data_to_send())

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self.sock.close()


def test_streams_held_by_one_client_do_not_block_others(proxy):
    upstream = LimitedH2Upstream(streams=5)
    cfg = {
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0", "protocol": "http1"}],
        "routes": [{"listener": "outbound", "backends": [{"service": "grpc"}]}],
        "services": [{"name": "grpc", "protocol": "http2", "endpoints": [{"addr": upstream.addr}]}],
    }
    p = proxy(cfg)
    hanging = []
    try:
        # One client takes every stream the upstream allows on a connection.
        for _ in range(5):
            client = httpx.Client(timeout=5)
            stream = client.stream("GET", p.url("outbound", "/hang"))
            response = stream.__enter__()
            assert response.status_code == 200
            hanging.append((client, stream))
        # Everyone else is still served, on a second upstream connection.
        for _ in range(3):
            r = httpx.get(p.url("outbound", "/"), timeout=5)
            assert r.status_code == 200 and r.text == "ok"
        assert upstream.connections == 2
    finally:
        for client, stream in hanging:
            stream.__exit__(None, None, None)
            client.close()
        upstream.close()
