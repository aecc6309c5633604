"""Bytes of an upgraded connection (WebSocket) count in the listener's
tcp_read_bytes_total and tcp_write_bytes_total, on both sides of a mesh hop.
(Payloads are random and compression is off: a repeated payload deflates to
almost nothing on the wire, which once looked like bytes going uncounted.)"""

from __future__ import annotations

import os
import threading

import pytest
from websockets.sync.client import connect
from websockets.sync.server import serve

from conftest import metric, one_service
from mesh_helpers import addr, identity_files, inbound_config, issue, make_ca, outbound_config

PAYLOAD = 256 * 1024
ROUNDS = 4


@pytest.fixture
def ws_echo():
    def echo(ws):
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()


def exchange(host: str, port: int) -> None:
    with connect(f"ws://{host}:{port}/chat", compression=None, max_size=None) as ws:
        for _ in range(ROUNDS):
            data = os.urandom(PAYLOAD)
            ws.send(data)
            assert ws.recv(timeout=10) == data


def tcp_bytes(proxy) -> tuple[float, float]:
    text = proxy.metrics()
    return metric(text, "tcp_read_bytes_total"), metric(text, "tcp_write_bytes_total")


def test_websocket_bytes_are_counted(proxy, ws_echo):
    p = proxy(one_service([ws_echo]))
    exchange(*p.addresses["outbound"])
    read, written = tcp_bytes(p)
    assert read >= PAYLOAD * ROUNDS and written >= PAYLOAD * ROUNDS
    # Framing and the upgrade's heads are small next to the payload.
    assert read < PAYLOAD * ROUNDS * 1.05 and written < PAYLOAD * ROUNDS * 1.05


def test_websocket_bytes_are_counted_on_both_sides_of_the_mesh(proxy, ws_echo, tmp_path):
    ca = make_ca(tmp_path / "ca")
    web = identity_files(ca, *issue(ca, "ns/default/sa/web", tmp_path / "web"))
    api = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    inbound = proxy(inbound_config(api, ws_echo))
    outbound = proxy(outbound_config(web, addr(inbound, "inbound")))
    exchange(*outbound.addresses["outbound"])
    for side in (outbound, inbound):
        read, written = tcp_bytes(side)
        assert read >= PAYLOAD * ROUNDS and written >= PAYLOAD * ROUNDS, side
