"""Zero trust end to end: client -> outbound proxy -> mTLS -> inbound proxy -> backend."""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import subprocess

import grpc
import httpx
import pytest

from conftest import TcpEcho
from mesh_helpers import (
    API,
    WEB,
    addr,
    identity_files,
    inbound_config,
    issue,
    issue_expired,
    make_ca,
    outbound_config,
)
from meshcore import Proxy, TlsError
from meshcore import identity as ident_mod


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


@pytest.fixture
def certs(ca, tmp_path):
    out = {}
    for who in ("web", "api", "other"):
        out[who] = identity_files(ca, *issue(ca, f"ns/default/sa/{who}", tmp_path / who))
    return out


@pytest.fixture
def mesh(certs, backend, proxy):
    def make(inbound_extra=None, outbound_extra=None, backend_addr=None):
        target = backend_addr or backend("app").addr
        inbound = proxy(inbound_config(certs["api"], target, **(inbound_extra or {})))
        outbound = proxy(outbound_config(certs["web"], addr(inbound, "inbound"), **(outbound_extra or {})))
        return outbound, inbound

    return make


def test_http1_over_mtls_carries_the_caller_identity(mesh):
    outbound, inbound = mesh()
    with httpx.Client() as c:
        seen = c.get(outbound.url("outbound", "/headers"), headers={"meshcore-client-id": "spoofed"}).json()
    assert seen["meshcore-client-id"] == WEB  # verified, and the spoofed value is gone
    assert 'tls="true"' in inbound.metrics()


def test_proxies_multiplex_over_one_h2_connection(mesh):
    outbound, inbound = mesh()
    with httpx.Client() as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: c.get(outbound.url("outbound", f"/{i}")).status_code, range(40)))
    assert codes == [200] * 40
    assert 'tcp_open_total{direction="inbound",listener="inbound"} 1' in inbound.metrics()


def test_h2_client_over_mtls(mesh):
    outbound, _ = mesh()
    with httpx.Client(http1=False, http2=True) as c:
        r = c.get(outbound.url("outbound", "/h2"))
    assert r.status_code == 200 and r.http_version == "HTTP/2"


def test_grpc_over_mtls(mesh):
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Bidi": grpc.stream_stream_rpc_method_handler(lambda it, ctx: (m[::-1] for m in it))}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        outbound, _ = mesh(inbound_extra={"service_protocol": "auto"}, backend_addr=f"127.0.0.1:{port}")
        with grpc.insecure_channel(addr(outbound, "outbound")) as ch:
            replies = list(ch.stream_stream("/test.Echo/Bidi")(iter([b"abc", b"xyz"]), timeout=10))
        assert replies == [b"cba", b"zyx"]
    finally:
        server.stop(0)


def test_opaque_tcp_over_mtls(certs, proxy):
    echo = TcpEcho()
    try:
        inbound = proxy(inbound_config(certs["api"], echo.addr, protocol="opaque"))
        outbound = proxy(outbound_config(certs["web"], addr(inbound, "inbound"), protocol="opaque"))
        with socket.create_connection(outbound.addresses["outbound"], timeout=5) as s:
            s.sendall(b"\x00binary payload\xff")
            assert s.recv(100) == b"\x00binary payload\xff"
    finally:
        echo.close()


def test_wrong_upstream_identity_is_502(mesh):
    outbound, _ = mesh(outbound_extra={"expected": WEB})
    r = httpx.get(outbound.url("outbound"))
    assert r.status_code == 502
    assert "identity mismatch" in r.headers["meshcore-error"]
    assert API in r.headers["meshcore-error"]


def tls_client(ca, cert=None, key=None, *, version=ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # peers are identified by SPIFFE ID, not DNS name
    ctx.load_verify_locations(ca / "trust-anchor.pem")
    ctx.minimum_version = ctx.maximum_version = version
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def try_request(ctx: ssl.SSLContext, address) -> bytes:
    """One HTTP/1.1 request over TLS; returns the response bytes, or raises."""
    with socket.create_connection(address, timeout=5) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_callers_without_a_valid_identity_are_refused(ca, certs, mesh, tmp_path):
    _, inbound = mesh()
    address = inbound.addresses["inbound"]
    # A proper client certificate works.
    ok = try_request(tls_client(ca, certs["web"]["cert"], certs["web"]["key"]), address)
    assert ok.startswith(b"HTTP/1.1 200")
    # No client certificate.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        assert not try_request(tls_client(ca), address).startswith(b"HTTP/1.1 200")
    # A certificate from another trust anchor.
    other_ca = make_ca(tmp_path / "other-ca")
    foreign = issue(other_ca, "ns/default/sa/web", tmp_path / "foreign")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        assert not try_request(tls_client(ca, *foreign), address).startswith(b"HTTP/1.1 200")
    # An expired certificate from the right issuer.
    expired = issue_expired(ca, "ns/default/sa/web", tmp_path / "expired")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        assert not try_request(tls_client(ca, *expired), address).startswith(b"HTTP/1.1 200")


def test_plaintext_refused_on_mesh_accepted_on_permissive(mesh, certs, backend, proxy):
    _, inbound = mesh()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{addr(inbound, 'inbound')}/")
    permissive = proxy(inbound_config(certs["api"], backend("app").addr, tls="permissive"))
    r = httpx.get(f"http://{addr(permissive, 'inbound')}/headers", headers={"meshcore-client-id": "spoofed"})
    assert r.status_code == 200
    assert "meshcore-client-id" not in r.json()
    assert 'tls="false"' in permissive.metrics()


def test_openssl_sees_tls13_only_and_a_required_client_cert(ca, certs, mesh):
    _, inbound = mesh()
    target = addr(inbound, "inbound")

    def s_client(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["openssl", "s_client", "-connect", target, "-CAfile", str(ca / "trust-anchor.pem"), *args],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
        )

    tls12 = s_client("-tls1_2")
    assert tls12.returncode != 0 or "Cipher is (NONE)" in tls12.stdout
    tls13 = s_client("-tls1_3", "-cert", certs["web"]["cert"], "-key", certs["web"]["key"])
    assert "TLSv1.3" in tls13.stdout and "Verify return code: 0 (ok)" in tls13.stdout
    assert "Requested Signature Algorithms" in tls13.stdout or "Acceptable client certificate" in tls13.stdout
    # Without a certificate the server aborts once the client has sent its (empty) one.
    anon = subprocess.run(
        # -ign_eof: keep reading after sending, so the server's alert is seen, not raced.
        [
            "openssl",
            "s_client",
            "-connect",
            target,
            "-tls1_3",
            "-ign_eof",
            "-CAfile",
            str(ca / "trust-anchor.pem"),
        ],
        input="GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "HTTP/1.1 200" not in anon.stdout
    assert "certificate required" in (anon.stdout + anon.stderr)


def test_token_cannot_get_another_identity(ca, tmp_path):
    with ident_mod.IdentityService(ca, tokens={"tok-web": "ns/default/sa/web"}) as svc:
        token = tmp_path / "web.token"
        token.write_text("tok-web\n")
        cfg = {
            "identity": {
                "trust_anchors": str(ca / "trust-anchor.pem"),
                "issuer": svc.url,
                "token_file": str(token),
                "name": "ns/default/sa/api",
            },
            "listeners": [{"name": "inbound", "bind": "127.0.0.1:0", "tls": "mesh"}],
        }
        with pytest.raises(TlsError, match="403"):
            Proxy(cfg)
