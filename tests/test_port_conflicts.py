"""A port is this proxy's alone: a second proxy, or any other process, on a
port in use gets a BindError instead of a silent share of the connections."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from conftest import one_service
from meshcore import BindError, MeshcoreError, Proxy


def config_on(port: int, endpoint: str) -> dict:
    cfg = one_service([endpoint])
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{port}"
    return cfg


def test_a_second_proxy_on_the_same_port_is_refused(proxy, backend):
    first = proxy(one_service([backend().addr]))
    port = first.addresses["outbound"][1]
    with pytest.raises(BindError, match=f"127.0.0.1:{port}"):
        Proxy(config_on(port, backend().addr)).start()
    # The first one keeps serving.
    with httpx.Client() as c:
        assert all(c.get(first.url("outbound", f"/{i}")).status_code == 200 for i in range(20))


def test_a_port_held_by_another_process_is_refused(backend):
    # Another process, not a meshcore, listening with SO_REUSEPORT set.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
            "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True)\n"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(holder.stdout.readline())
        with pytest.raises(BindError, match="in use"):
            Proxy(config_on(port, backend().addr)).start()
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_two_listeners_of_one_config_cannot_share_a_port(backend):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = config_on(port, backend().addr)
    cfg["listeners"].append({"name": "again", "bind": f"127.0.0.1:{port}"})
    cfg["routes"].append({"listener": "again", "backends": [{"service": "web"}]})
    # Refused as a config error when validation sees it, else when binding.
    with pytest.raises(MeshcoreError, match=r"again|listeners\[1\]"):
        Proxy(cfg).start()
