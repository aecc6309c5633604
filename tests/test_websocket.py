"""WebSocket upgrades pass through the proxy as a spliced byte stream."""

from __future__ import annotations

import re
import threading

from websockets.sync.client import connect
from websockets.sync.server import serve

from conftest import one_service


def test_websocket_round_trip(proxy):
    def echo(ws):
        for message in ws:
            ws.send(f"echo:{message}" if isinstance(message, str) else message[::-1])

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        p = proxy(one_service([f"127.0.0.1:{port}"]))
        host, pport = p.addresses["outbound"]
        with connect(f"ws://{host}:{pport}/chat") as ws:
            for i in range(20):
                ws.send(f"hello {i}")
                assert ws.recv(timeout=5) == f"echo:hello {i}"
            ws.send(b"\x01\x02\x03")
            assert ws.recv(timeout=5) == b"\x03\x02\x01"
        server.shutdown()
    # One upgrade, answered 101 once (the whole spliced session is one response).
    upgrades = re.findall(r'^response_total\{[^}]*status_code="101"[^}]*\} (\S+)$', p.metrics(), re.M)
    assert upgrades == ["1"]
