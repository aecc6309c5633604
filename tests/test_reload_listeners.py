"""Listeners change on reload without touching the others: an added one opens, a removed one
stops accepting and drains, a rebound one moves, a changed one keeps its socket, and a reload
that cannot bind changes nothing."""

from __future__ import annotations

import copy
import socket

import httpx
import pytest

from conftest import closed_port, one_service, refuses_connections
from meshcore import BindError

GET = b"GET / HTTP/1.1\r\nhost: web\r\n\r\n"


def ask(sock: socket.socket) -> bytes:
    """Sends one request on a kept-alive connection and reads its whole (small) answer head."""
    sock.sendall(GET)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        rest += sock.recv(4096)
    return head


def two_listeners(endpoint: str) -> dict:
    cfg = one_service([endpoint])
    cfg["listeners"].append({"name": "second", "bind": "127.0.0.1:0"})
    cfg["routes"].append({"listener": "second", "backends": [{"service": "web"}]})
    return cfg


def test_an_added_listener_serves_and_the_others_keep_their_connections(backend, proxy):
    cfg = one_service([backend("web").addr])
    p = proxy(cfg)
    before = p.addresses["outbound"]
    with socket.create_connection(before) as kept:
        assert ask(kept).startswith(b"HTTP/1.1 200")
        p.reload(two_listeners(backend("web").addr) | {"services": cfg["services"]})
        assert p.addresses["outbound"] == before
        assert "second" in p.addresses
        assert httpx.get(p.url("second")).status_code == 200
        # The connection accepted before the reload is the same one, still served.
        assert ask(kept).startswith(b"HTTP/1.1 200")


def test_a_removed_listener_refuses_and_drains_its_connections(backend, proxy):
    b = backend("web")
    cfg = two_listeners(b.addr)
    p = proxy(cfg)
    gone = p.addresses["second"]
    with socket.create_connection(gone) as open_before:
        assert ask(open_before).startswith(b"HTTP/1.1 200")
        p.reload(one_service([b.addr]))
        assert refuses_connections(gone)
        assert "second" not in p.addresses
        # Draining: a connection idle between requests is closed (one in the middle of a
        # request would get its answer first, as in any drain).
        open_before.settimeout(10)
        assert open_before.recv(10) == b""
    assert httpx.get(p.url("outbound")).status_code == 200


def test_a_rebound_listener_moves_to_its_new_address(backend, proxy):
    b = backend("web")
    cfg = one_service([b.addr])
    p = proxy(cfg)
    old = p.addresses["outbound"]
    moved = copy.deepcopy(cfg)
    new_port = closed_port()
    moved["listeners"][0]["bind"] = f"127.0.0.1:{new_port}"
    p.reload(moved)
    assert p.addresses["outbound"] == ("127.0.0.1", new_port)
    assert refuses_connections(old)
    assert httpx.get(p.url("outbound")).status_code == 200


def test_changed_settings_keep_the_socket_and_apply_to_new_connections(backend, proxy):
    b = backend("web")
    cfg = one_service([b.addr])
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{closed_port()}"
    p = proxy(cfg)
    addr = p.addresses["outbound"]
    with socket.create_connection(addr) as kept:
        assert ask(kept).startswith(b"HTTP/1.1 200")
        changed = copy.deepcopy(cfg)
        changed["listeners"][0]["protocol"] = "http2"  # prior knowledge only, from now on
        p.reload(changed)
        assert p.addresses["outbound"] == addr
        assert ask(kept).startswith(b"HTTP/1.1 200"), "the connection from before keeps its settings"
    with httpx.Client(http1=False, http2=True) as h2:
        assert h2.get(p.url("outbound")).http_version == "HTTP/2"


def test_a_renamed_listener_keeps_its_sockets(backend, proxy):
    b = backend("web")
    cfg = one_service([b.addr])
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{closed_port()}"
    p = proxy(cfg)
    addr = p.addresses["outbound"]
    renamed = copy.deepcopy(cfg)
    renamed["listeners"][0]["name"] = "edge"
    renamed["routes"][0]["listener"] = "edge"
    p.reload(renamed)
    assert p.addresses == {"edge": addr}
    assert httpx.get(p.url("edge")).status_code == 200
    assert 'listener="edge"' in p.metrics()


def test_a_reload_that_cannot_bind_changes_nothing(backend, proxy):
    old, new = backend("old"), backend("new")
    cfg = one_service([old.addr])
    p = proxy(cfg)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        changed = two_listeners(new.addr)
        changed["listeners"][1]["bind"] = f"127.0.0.1:{busy}"
        with pytest.raises(BindError, match=rf"listener \"second\" cannot bind 127.0.0.1:{busy}"):
            p.reload(changed)
    assert list(p.addresses) == ["outbound"]
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "old", "the routes did not change either"
    assert p.config.services[0].endpoints[0].addr == old.addr


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_renamed_listener_under_load_loses_no_request(backend, proxy, http2):
    from conftest import wait_until
    from meshcore import bench

    b = backend("web")
    cfg = one_service([b.addr], listener_protocol="http2" if http2 else "auto")
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{closed_port()}"
    p = proxy(cfg)
    load = bench.start(p.url("outbound"), rate=400, duration=60, connections=4, http2=http2, streams=2)
    try:
        wait_until(lambda: load.progress()[1] >= 100, what="load under way")
        renamed = copy.deepcopy(cfg)
        renamed["listeners"][0]["name"] = "edge"
        renamed["routes"][0]["listener"] = "edge"
        p.reload(renamed)  # the old name's connections drain: clients move to new ones
        done = load.progress()[1]
        wait_until(lambda: load.progress()[1] >= done + 100, what="load after the reload")
    finally:
        load.stop()
    result = load.wait()
    assert result.errors == {}, result.errors
    assert set(result.statuses) == {200}, result.statuses
    assert result.resent >= 1, "the old connections drained: requests moved to new ones"
