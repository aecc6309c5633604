"""Post-quantum key exchange between proxies: the hybrid X25519MLKEM768 is offered and preferred,
X25519 is what a peer without ML-KEM gets, and `tls_handshakes_total` names the group each
handshake negotiated, on the server side and on the client side."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess

import httpx
import pytest

from conftest import wait_until
from mesh_helpers import API, addr, identity_files, inbound_config, issue, make_ca, outbound_config

HYBRID, CLASSIC = "X25519MLKEM768", "X25519"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca = make_ca(tmp / "ca")
    files = {name: issue(ca, f"ns/default/sa/{name}", tmp / name) for name in ("web", "api")}
    return ca, files


def handshakes(proxy, side: str) -> dict[str, float]:
    pattern = rf'^tls_handshakes_total{{side="{side}",group="([^"]+)"}} (\S+)$'
    return {group: float(n) for group, n in re.findall(pattern, proxy.metrics(), re.M) if float(n)}


def test_two_proxies_negotiate_the_hybrid_group_and_both_count_it(pki, backend, proxy):
    ca, files = pki
    inbound = proxy(inbound_config(identity_files(ca, *files["api"]), backend("app").addr))
    outbound = proxy(outbound_config(identity_files(ca, *files["web"]), addr(inbound, "inbound")))
    assert httpx.get(outbound.url("outbound", "/")).status_code == 200
    assert handshakes(inbound, "server") == {HYBRID: 1}
    assert handshakes(outbound, "client") == {HYBRID: 1}


def test_a_client_with_ml_kem_gets_the_hybrid_group(pki, backend, proxy):
    """pyOpenSSL on the OpenSSL that `cryptography` bundles (3.5 or later offers ML-KEM): the client
    reports the group it negotiated, and the proxy counts the same one."""
    from OpenSSL import SSL

    ca, files = pki
    inbound = proxy(inbound_config(identity_files(ca, *files["api"]), backend("app").addr, tls="permissive"))
    host, port = addr(inbound, "inbound").rsplit(":", 1)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_alpn_protos([b"http/1.1"])
    with socket.create_connection((host, int(port))) as sock:
        conn = SSL.Connection(context, sock)  # blocking: pyOpenSSL raises WantRead on a timeout socket
        conn.set_connect_state()
        conn.do_handshake()
        group = conn.get_group_name()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        head = conn.recv(4096)
    assert group == HYBRID
    assert head.startswith(b"HTTP/1.1 200"), head
    assert handshakes(inbound, "server") == {HYBRID: 1}  # counted before the request was read


def test_a_client_without_ml_kem_falls_back_to_x25519(pki, backend, proxy):
    """Debian's openssl (3.0) knows no ML-KEM: it offers X25519 and says so, as does the proxy."""
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout
    if not re.match(r"OpenSSL 3\.[0-4]\.", version):
        pytest.skip(f"this openssl may offer ML-KEM: {version.strip()}")
    ca, files = pki
    inbound = proxy(inbound_config(identity_files(ca, *files["api"]), backend("app").addr, tls="permissive"))
    said = subprocess.run(
        ["openssl", "s_client", "-connect", addr(inbound, "inbound"), "-alpn", "http/1.1"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Server Temp Key: X25519," in said.stdout, said.stdout + said.stderr
    # s_client may end before the proxy has finished its side of the handshake.
    wait_until(lambda: handshakes(inbound, "server") == {CLASSIC: 1}, what="the handshake counted")


def test_an_upstream_without_ml_kem_gets_x25519_from_the_proxy(pki, proxy):
    """The proxy as client, to hypercorn over TLS on Python's ssl (Debian's OpenSSL 3.0) holding
    the upstream's identity: it answers the X25519 share the proxy sends beside the hybrid one."""
    from asgi_backend import AsgiBackend

    if ssl.OPENSSL_VERSION_INFO >= (3, 5):
        pytest.skip(f"Python's {ssl.OPENSSL_VERSION} may offer ML-KEM")
    ca, files = pki
    crt, key = files["api"]
    upstream = AsgiBackend(tls=(str(crt), str(key)))
    try:
        outbound = proxy(outbound_config(identity_files(ca, *files["web"]), upstream.addr, expected=API))
        answer = httpx.get(outbound.url("outbound", "/"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["http_version"] == "2", "meshed: HTTP/2 over the mTLS connection"
        assert handshakes(outbound, "client") == {CLASSIC: 1}
    finally:
        upstream.stop()


def test_the_handshake_bench_negotiates_the_group_it_asks_for(pki):
    from meshcore import _core

    ca, files = pki
    crt, key = files["api"]
    pems = ((ca / "trust-anchor.pem").read_text(), crt.read_text(), key.read_text())
    for group, negotiates in ((HYBRID, HYBRID), (CLASSIC, CLASSIC), ("default", HYBRID)):
        done, negotiated = _core._bench_handshakes(group, *pems, API, 0.0)
        assert (done, negotiated) == (1, negotiates)
    with pytest.raises(ValueError, match="secp256r1"):
        _core._bench_handshakes("secp256r1", *pems, API, 0.0)
