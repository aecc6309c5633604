"""Identity through the control plane (#18): `control serve --identity-ca` also runs the identity
service and serves with a certificate it issues itself; a proxy holding only a bootstrap token
and the trust anchors gets its identity there and follows the control plane over mTLS with it;
the control plane's SPIFFE ID is checked when configured."""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from control_helpers import ControlPlane, service_toml, write

from conftest import one_service, wait_until
from mesh_helpers import WEB, make_ca
from meshcore import Proxy, identity
from meshcore.config import load
from meshcore.control.client import Subscription
from meshcore.control.issued_tls import IssuedServerTls, default_hosts
from meshcore.control.server import ControlServer
from meshcore.control.server_identity import checked_server_leaf
from meshcore.control.store import Store
from meshcore.errors import ConfigError, TlsError
from meshcore.identity.service import IdentityService

MESHCORE = [sys.executable, "-m", "meshcore"]
CONTROL = "spiffe://mesh.local/control"
TOKEN = "web-bootstrap-token-0123456789"
PROXY = {"id": "test-proxy", "version": "0.1.0", "zone": "zone-a", "cluster": None}


@pytest.fixture
def mesh(tmp_path):
    """A CA, a tokens file, a directory of documents, and a control plane started on them."""
    ca = make_ca(tmp_path / "ca")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} ns/default/sa/web\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    started: list[ControlPlane] = []

    class Mesh:
        def __init__(self) -> None:
            self.ca, self.tokens, self.docs = ca, tokens, docs
            # What a proxy is given: the trust anchors alone, away from the CA's keys.
            self.anchors = tmp_path / "proxy" / "trust-anchors.pem"
            self.anchors.parent.mkdir()
            shutil.copy(ca / "trust-anchor.pem", self.anchors)

        def control(self, *extra: str) -> ControlPlane:
            flags = ["--identity-ca", str(ca), "--tokens", str(tokens), "--identity-bind", "127.0.0.1:0"]
            plane = ControlPlane(docs, tls=[*flags, *extra])
            started.append(plane)
            match = re.search(r"identity service on (https://\S+?)\)", plane.serving)
            assert match, plane.serving
            plane.issuer = match.group(1)  # type: ignore[attr-defined]
            return plane

        def proxy_config(self, plane: ControlPlane, token: str = TOKEN, **discovery: str) -> dict:
            token_file = tmp_path / "proxy" / "token"
            token_file.write_text(token + "\n")
            cfg = one_service([])
            cfg["identity"] = {
                "trust_anchors": str(self.anchors),
                "issuer": plane.issuer,  # type: ignore[attr-defined]
                "token_file": str(token_file),
                "name": "ns/default/sa/web",
            }
            cfg["discovery"] = {"control": f"https://{plane.addr}", **discovery}
            return cfg

    yield Mesh()
    for plane in started:
        plane.kill()


def served_by(p: Proxy) -> str:
    return httpx.get(p.url("outbound"), timeout=10).headers.get("x-backend", "")


def test_a_proxy_with_only_a_token_gets_its_identity_and_follows_over_mtls(mesh, proxy, backend):
    a, b = backend("a"), backend("b")
    write(mesh.docs / "web.toml", service_toml("web", a.addr))
    plane = mesh.control()
    assert f"mTLS as {CONTROL}" in plane.serving

    p = proxy(mesh.proxy_config(plane, control_identity=CONTROL))
    assert p.identity()["spiffe_id"] == WEB, "the certificate came from the mounted identity service"
    assert served_by(p) == "a", "start() waited for the first snapshot, over mTLS"
    wait_until(
        lambda: plane.logged("subscribed: proxy", f"identity {WEB}"), what="the caller's identity logged"
    )
    write(mesh.docs / "web.toml", service_toml("web", b.addr))
    wait_until(lambda: served_by(p) == "b", what="the moved endpoint to serve")


def test_a_bad_token_is_refused_with_a_clear_error(mesh):
    plane = mesh.control()
    with pytest.raises(TlsError, match="identity service answered 401: unknown token"):
        Proxy(mesh.proxy_config(plane, token="not-a-token-anyone-gave-out"))


def test_the_control_planes_spiffe_id_is_checked(mesh, tmp_path):
    write(mesh.docs / "web.toml", service_toml("web", "127.0.0.1:1"))
    plane = mesh.control()
    chain, key = identity.issue(mesh.ca, "ns/default/sa/web")
    anchors = mesh.anchors.read_bytes()

    def follow(expected: str) -> Subscription:
        updates: queue.Queue = queue.Queue()
        return Subscription(
            f"https://{plane.addr}",
            ["web"],
            updates.put,
            tls=lambda: (chain, key, anchors),  # PEMs held in memory, as a proxy's from the issuer
            proxy_info=PROXY,
            server_identity=expected,
        ).start()

    wrong = follow("spiffe://mesh.local/ns/default/sa/impostor")
    try:
        wait_until(lambda: wrong.last_error is not None, what="the first connect to fail")
        assert f"is {CONTROL}, not spiffe://mesh.local/ns/default/sa/impostor" in wrong.last_error
        assert "control_identity" in wrong.last_error
        assert not wrong.wait_synced(0)
    finally:
        wrong.stop()
    assert not plane.logged("subscribed: proxy test-proxy"), "nothing was sent to the wrong one"

    right = follow(CONTROL)
    try:
        assert right.wait_synced(15), right.last_error
        assert right.state()["web"]["exists"]
    finally:
        right.stop()
    assert plane.wait_logged("subscribed: proxy test-proxy", f"identity {WEB}")


def test_the_check_refuses_a_server_of_the_mesh_with_another_identity(tmp_path):
    """A server with a valid certificate for the right host, from the mesh's own CA, but
    another SPIFFE ID (any workload's): refused before gRPC ever connects."""
    ca = make_ca(tmp_path / "ca")
    other = IssuedServerTls(ca, name="ns/default/sa/api", hosts=["127.0.0.1"])
    chain, key = identity.issue(ca, "ns/default/sa/web")

    async def run() -> None:
        server = ControlServer(Store(), "127.0.0.1:0", other)
        await server.start()
        try:
            kwargs = {"chain_pem": chain, "key_pem": key, "anchors_pem": other.trust_anchors_pem}
            with pytest.raises(TlsError, match=f"is spiffe://mesh.local/ns/default/sa/api, not {CONTROL}"):
                await asyncio.to_thread(checked_server_leaf, "127.0.0.1", server.port, CONTROL, **kwargs)
            leaf = await asyncio.to_thread(
                checked_server_leaf,
                "127.0.0.1",
                server.port,
                "spiffe://mesh.local/ns/default/sa/api",
                **kwargs,
            )
            assert leaf in other.chain_pem
        finally:
            await server.stop(0)

    asyncio.run(run())


def test_the_control_plane_renews_its_own_certificate_before_it_expires(tmp_path):
    ca = make_ca(tmp_path / "ca")
    now = [datetime.now(timezone.utc)]
    tls = IssuedServerTls(ca, hosts=["127.0.0.1"], ttl=timedelta(hours=1), clock=lambda: now[0])
    chain, key = identity.issue(ca, "ns/default/sa/web")
    kwargs = {"chain_pem": chain, "key_pem": key, "anchors_pem": tls.trust_anchors_pem}

    async def run() -> tuple[bytes, bytes, bytes]:
        server = ControlServer(Store(), "127.0.0.1:0", tls)
        await server.start()
        try:

            def probe():
                return asyncio.to_thread(checked_server_leaf, "127.0.0.1", server.port, CONTROL, **kwargs)

            first = await probe()
            again = await probe()  # before 70 % of its hour: the same certificate
            now[0] += timedelta(minutes=43)
            renewed = await probe()
            return first, again, renewed
        finally:
            await server.stop(0)

    first, again, renewed = asyncio.run(run())
    assert first == again and renewed != first
    assert tls.renewals == 1 and renewed in tls.chain_pem
    assert identity.cert_info(renewed)["spiffe_id"] == CONTROL


def test_the_control_plane_reissues_itself_when_the_ca_rotates(tmp_path):
    """New issuer and bundle files (as `rotate-anchor issuer` leaves them): the next handshake gets
    a certificate under the new anchor, and the roots that check proxies are the new bundle."""
    ca, following = make_ca(tmp_path / "ca"), make_ca(tmp_path / "next")
    tls = IssuedServerTls(ca, hosts=["127.0.0.1"])
    chain, key = identity.issue(following, "ns/default/sa/web")
    next_anchor = (following / "trust-anchor.pem").read_bytes()

    async def run() -> bytes:
        server = ControlServer(Store(), "127.0.0.1:0", tls)
        await server.start()
        try:
            old_anchor = (ca / "trust-anchor.pem").read_bytes()
            (ca / "trust-anchor.pem").write_bytes(old_anchor + next_anchor)
            shutil.copy(following / "issuer.key", ca / "issuer.key")
            shutil.copy(following / "issuer.pem", ca / "issuer.pem")
            return await asyncio.to_thread(
                checked_server_leaf,
                "127.0.0.1",
                server.port,
                CONTROL,
                chain_pem=chain,
                key_pem=key,
                anchors_pem=next_anchor,
            )
        finally:
            await server.stop(0)

    served = asyncio.run(run())
    assert identity.cert_info(served)["spiffe_id"] == CONTROL and served in tls.chain_pem
    assert tls.trust_anchors_pem.count(b"BEGIN CERTIFICATE") == 2


def test_the_identity_services_token_check_is_a_callable(tmp_path):
    ca = make_ca(tmp_path / "ca")
    anchors = (ca / "trust-anchor.pem").read_bytes()
    asked: list[str] = []

    def name_for(token: str):
        asked.append(token)
        if token == "down":
            raise ConnectionError("token review API unreachable")
        return "ns/default/sa/web" if token == "sa-token" else None

    with IdentityService(ca, tokens=name_for) as service:
        chain, _key, _ = identity.request_certificate(service.url, "sa-token", "ns/default/sa/web", anchors)
        assert identity.cert_info(chain)["spiffe_id"] == WEB
        with pytest.raises(TlsError, match="answered 403: token not valid for ns/default/sa/api"):
            identity.request_certificate(service.url, "sa-token", "ns/default/sa/api", anchors)
        with pytest.raises(TlsError, match="answered 401: unknown token"):
            identity.request_certificate(service.url, "other", "ns/default/sa/web", anchors)
        with pytest.raises(TlsError, match="answered 503: cannot check the token: ConnectionError"):
            identity.request_certificate(service.url, "down", "ns/default/sa/web", anchors)
    assert asked == ["sa-token", "sa-token", "other", "down"]
    checker = identity.first_of(identity.StaticTokens({"t1": "a"}), lambda t: "b" if t == "t2" else None)
    assert [checker(t) for t in ("t1", "t2", "t3")] == ["a", "b", None]


def test_control_serve_identity_flags_are_checked(tmp_path):
    ca = make_ca(tmp_path / "ca")
    docs = tmp_path / "docs"
    docs.mkdir()

    def serve(*flags: str) -> str:
        r = subprocess.run(
            [*MESHCORE, "control", "serve", "--dir", str(docs), "--bind", "127.0.0.1:0", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1, r
        return r.stderr

    assert "give --tokens FILE or --token-review KUBECONFIG" in serve("--identity-ca", str(ca))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} web\n")
    files = ["--tls-cert", "c", "--tls-key", "k", "--trust-anchors", "a"]
    assert "with --identity-ca: the control plane then serves with a certificate from that CA" in serve(
        "--identity-ca", str(ca), "--tokens", str(tokens), *files
    )
    assert "--tokens needs --identity-ca DIR" in serve("--tokens", str(tokens))
    assert "no CA in" in serve("--identity-ca", str(tmp_path / "none"), "--tokens", str(tokens))


def test_discovery_config_for_an_issued_identity():
    identity_section = {
        "trust_anchors": "a.pem",
        "issuer": "https://127.0.0.1:8443",
        "token_file": "t",
        "name": "web",
    }

    def config(**discovery: str) -> dict:
        return {**one_service([]), "identity": identity_section, "discovery": discovery}

    ok = load(config(control="https://127.0.0.1:8470", control_identity=CONTROL))
    assert ok.discovery is not None and ok.discovery.control_identity == CONTROL
    with pytest.raises(ConfigError, match="control_identity is checked over https:// only"):
        load(config(control="http://127.0.0.1:8470", control_identity=CONTROL))
    with pytest.raises(ConfigError, match="expected a spiffe:// ID"):
        load(config(control="https://127.0.0.1:8470", control_identity="control"))


def test_default_hosts_follow_the_bind():
    assert default_hosts("127.0.0.1") == ["localhost", "127.0.0.1"]
    assert default_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "::1"]
    assert default_hosts("10.1.2.3") == ["10.1.2.3"]
    assert default_hosts("control.mesh") == ["control.mesh"]


def test_kubernetes_service_account_tokens_are_checked_by_tokenreview(mesh, tmp_path):
    from kube_fake import FakeKubeApi

    (tmp_path / "kube").mkdir()
    kube = FakeKubeApi(tmp_path / "kube").start()
    try:
        flags = ["--identity-ca", str(mesh.ca), "--token-review", str(kube.kubeconfig())]
        plane = ControlPlane(mesh.docs, tls=[*flags, "--identity-bind", "127.0.0.1:0"])
        try:
            issuer = re.search(r"identity service on (https://\S+?)\)", plane.serving).group(1)
            token = tmp_path / "sa-token"
            token.write_text("token-web\n")  # the recorded ServiceAccount shop/web
            config = {
                **one_service([]),
                "identity": {
                    "trust_anchors": str(mesh.anchors),
                    "issuer": issuer,
                    "token_file": str(token),
                    "name": "ns/shop/sa/web",
                },
            }
            with Proxy(config) as p:
                assert p.identity()["spiffe_id"] == "spiffe://mesh.local/ns/shop/sa/web"
            # Another workload's name with that token, and a token Kubernetes does not know.
            with pytest.raises(TlsError, match="403: token not valid for ns/shop/sa/api"):
                Proxy({**config, "identity": {**config["identity"], "name": "ns/shop/sa/api"}})
            token.write_text("token-alice\n")  # a person, not a workload
            with pytest.raises(TlsError, match="401: unknown token"):
                Proxy(config)
            kube.stop()  # Kubernetes away: not "unknown token", but "cannot check"
            token.write_text("token-web\n")
            with pytest.raises(TlsError, match="503: cannot check the token"):
                Proxy(config)
        finally:
            plane.kill()
    finally:
        kube.stop()
