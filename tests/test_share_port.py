"""`share_port = true`: the explicit opt-in to share a listener's port with another process,
as a hand-over from an old proxy to a new one needs. Without it a port in use is a BindError."""

from __future__ import annotations

import httpx
import pytest

from conftest import closed_port, one_service
from meshcore import BindError, Proxy


def on_port(port: int, endpoint: str, share: bool) -> dict:
    cfg = one_service([endpoint])
    cfg["listeners"][0].update(bind=f"127.0.0.1:{port}", share_port=share)
    return cfg


def test_a_new_proxy_takes_over_a_shared_port(backend):
    port = closed_port()
    old = Proxy(on_port(port, backend("old").addr, share=True)).start()
    try:
        new = Proxy(on_port(port, backend("new").addr, share=True)).start()
    except BaseException:
        old.stop(0)
        raise
    try:
        assert new.addresses["outbound"] == ("127.0.0.1", port)
        old.stop(5)
        # The port never closed: the new proxy answers every connection from now on.
        for _ in range(10):
            with httpx.Client() as c:
                assert c.get(f"http://127.0.0.1:{port}/").headers["x-backend"] == "new"
    finally:
        new.stop(0)


def test_a_port_is_shared_only_when_both_ask(backend, proxy):
    port = closed_port()
    proxy(on_port(port, backend().addr, share=True))
    with pytest.raises(BindError, match=f"127.0.0.1:{port}"):
        Proxy(on_port(port, backend().addr, share=False)).start()
