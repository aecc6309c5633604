"""A proxy that follows a control plane (#18): `[discovery] control` fills the services the config
lists without endpoints, live, over plain loopback HTTP/2 or mTLS; endpoints move under load
with no failed request, and the proxy keeps its last known state while the control plane is
away, then resumes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from control_helpers import ControlPlane, service_toml, write

from conftest import one_service, wait_until
from mesh_helpers import identity_files, make_ca
from meshcore import ConfigError, Proxy, identity
from meshcore.config import load


@pytest.fixture
def planes():
    started: list[ControlPlane] = []

    def make(docs: Path, **kwargs) -> ControlPlane:
        plane = ControlPlane(docs, **kwargs)
        started.append(plane)
        return plane

    yield make
    for plane in started:
        plane.kill()


def following(url: str, **extra) -> dict:
    cfg = one_service([])
    cfg["discovery"] = {"control": url}
    cfg.update(extra)
    return cfg


def served_by(p: Proxy) -> str:
    return httpx.get(p.url("outbound"), timeout=10).headers.get("x-backend", "")


def test_a_proxy_serves_what_the_control_plane_says_and_follows_its_changes(tmp_path, planes, proxy, backend):
    a, b = backend("a"), backend("b")
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", a.addr))
    plane = planes(docs)
    p = proxy(following(f"http://{plane.addr}"))
    assert served_by(p) == "a", "start() waited for the first snapshot"
    write(docs / "web.toml", service_toml("web", b.addr, zone="zone-b"))
    wait_until(lambda: served_by(p) == "b", what="the moved endpoint to serve")
    [ep] = p.endpoints()["services"][0]["endpoints"]
    assert (ep["addr"], ep["zone"]) == (b.addr, "zone-b")

    # The control plane goes away: the proxy serves on from what it knows.
    plane.kill()
    assert all(served_by(p) == "b" for _ in range(5))
    # It comes back (with another address is not this test: same docs, new process, new port
    # would be a new URL); a new control plane on the same port resumes the subscription.
    host, port = plane.addr.rsplit(":", 1)
    write(docs / "web.toml", service_toml("web", a.addr))
    planes(docs, bind=f"{host}:{port}")
    wait_until(lambda: served_by(p) == "a", 30, "the proxy to resume and take the change")


def test_a_service_the_control_plane_does_not_have_answers_503_until_it_does(
    tmp_path, planes, proxy, backend
):
    a = backend("a")
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "other.toml", service_toml("other", a.addr))
    plane = planes(docs)
    p = proxy(following(f"http://{plane.addr}"))
    assert httpx.get(p.url("outbound")).status_code == 503
    write(docs / "web.toml", service_toml("web", a.addr))
    wait_until(lambda: httpx.get(p.url("outbound")).status_code == 200, what="the new service's endpoints")


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_endpoints_moved_by_the_control_plane_under_load_lose_no_request(
    tmp_path, planes, proxy, backend, http2
):
    from meshcore import bench

    backends = [backend(f"b{i}") for i in range(3)]
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", backends[0].addr))
    plane = planes(docs)
    p = proxy(following(f"http://{plane.addr}"))
    load = bench.start(p.url("outbound"), rate=300, duration=90, connections=4, http2=http2, streams=2)
    try:
        for step in range(4):  # add one, move to another zone, drain the first away, back
            addrs = [backends[(step + k) % 3].addr for k in range(1 + step % 2)]
            write(docs / "web.toml", service_toml("web", *addrs, zone="zone-a" if step % 2 else "zone-b"))
            wanted = set(addrs)
            wait_until(
                lambda wanted=wanted: (
                    {e["addr"] for e in p.endpoints()["services"][0]["endpoints"]} == wanted
                ),
                30,
                f"step {step} to reach the proxy",
            )
            done = load.progress()[1]
            wait_until(lambda done=done: load.progress()[1] >= done + 30, what=f"load after step {step}")
    finally:
        load.stop()
    result = load.wait()
    assert result.errors == {}, result.errors
    assert set(result.statuses) == {200}, result.statuses
    assert sum(b.requests for b in backends) == result.requests


def test_a_proxy_follows_over_mtls_with_its_own_identity(tmp_path, planes, proxy, backend):
    a = backend("a")
    ca = make_ca(tmp_path / "ca")
    identity.issue(ca, "control", out_prefix=str(tmp_path / "control"), hosts=["127.0.0.1"])
    identity.issue(ca, "ns/default/sa/web", out_prefix=str(tmp_path / "web"))
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", a.addr))
    anchors = ca / "trust-anchor.pem"
    plane = planes(
        docs,
        tls=["--tls-cert", f"{tmp_path}/control.crt", "--tls-key", f"{tmp_path}/control.key"]
        + ["--trust-anchors", str(anchors)],
    )
    ident = identity_files(ca, tmp_path / "web.crt", tmp_path / "web.key")
    p = proxy(following(f"https://{plane.addr}", identity=ident))
    assert served_by(p) == "a"
    wait_until(
        lambda: plane.logged("identity spiffe://mesh.local/ns/default/sa/web"), what="the caller logged"
    )


def test_https_discovery_takes_an_identity_from_files_or_the_identity_service():
    issued = {"trust_anchors": "ca.pem", "issuer": "https://ca", "token_file": "t", "name": "web"}
    config = load(following("https://127.0.0.1:7000", identity=issued))
    assert config.discovery is not None and config.identity is not None
    with pytest.raises(ConfigError, match=r"discovery.control: an https:// control plane takes"):
        load(following("https://127.0.0.1:7000"))
