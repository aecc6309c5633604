"""Edge listeners (`tls = "server"`): TLS with the listener's own certificate, from a CA outside
the mesh, for clients that present none, over HTTP/1.1 and HTTP/2; plaintext refused; bad
certificate files named by field; renewed files served from the next handshake."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import MESHCORE, OutputLines, closed_unanswered, require_tool, wait_until
from meshcore import Proxy
from meshcore.errors import ConfigError


class SiteCa:
    """A CA of the kind that signs a web site's certificate (not the mesh's), and leaves for
    `localhost` and 127.0.0.1 that it signs."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Site CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / "site-ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str) -> tuple[Path, Path, int]:
        """A leaf for localhost: its chain file, its key file and its serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        crt, key_file = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        crt.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return crt, key_file, serial

    def client_context(self, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pem))
        context.maximum_version = maximum
        return context


@pytest.fixture
def site(tmp_path: Path) -> SiteCa:
    return SiteCa(tmp_path)


def edge_config(backend_addr: str, crt: Path, key: Path, **listener: Any) -> dict[str, Any]:
    return {
        "admin": "127.0.0.1:0",
        "listeners": [
            {
                "name": "edge",
                "bind": "127.0.0.1:0",
                "tls": "server",
                "certificate": {"cert": str(crt), "key": str(key)},
                **listener,
            }
        ],
        "routes": [{"listener": "edge", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "endpoints": [{"addr": backend_addr}]}],
    }


def https(proxy: Proxy, path: str = "/") -> str:
    _, port = proxy.addresses["edge"]
    return f"https://localhost:{port}{path}"


def served_serial(port: int, site: SiteCa) -> int:
    """The serial number of the certificate a new handshake on `port` is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with site.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_clients_without_certificates_get_https_over_http1_and_http2(site, backend, proxy):
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    edge = proxy(edge_config(app.addr, crt, key))
    with httpx.Client(verify=site.client_context()) as client:
        one = client.get(https(edge, "/one"))
    with httpx.Client(verify=site.client_context(), http2=True) as client:
        two = client.get(https(edge, "/two"))
    assert (one.status_code, one.http_version) == (200, "HTTP/1.1")
    assert (two.status_code, two.http_version) == (200, "HTTP/2")
    assert "path=/one" in one.text and "path=/two" in two.text
    assert app.requests == 2


def test_a_tls_1_2_client_is_served_too(site, backend, proxy):
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    edge = proxy(edge_config(app.addr, crt, key))
    _, port = edge.addresses["edge"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = site.client_context(maximum=ssl.TLSVersion.TLSv1_2)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            tls.sendall(b"GET /old HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"path=/old" in answer


def test_no_client_certificate_is_asked_for(site, backend, proxy):
    openssl = require_tool("openssl", "openssl")
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    edge = proxy(edge_config(app.addr, crt, key))
    host, port = edge.addresses["edge"]
    for version in ("-tls1_3", "-tls1_2"):
        done = subprocess.run(
            [openssl, "s_client", version, "-connect", f"{host}:{port}", "-CAfile", str(site.pem)],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
        assert "No client certificate CA names sent" in done.stdout, version
        assert "Requested Signature Algorithms" not in done.stdout, version


def test_a_pinned_protocol_is_what_alpn_offers(site, backend, tcp_echo, proxy):
    app, echo = backend(name="app"), tcp_echo()
    crt, key, _ = site.issue("edge")
    http1 = proxy(edge_config(app.addr, crt, key, protocol="http1"))
    with httpx.Client(verify=site.client_context(), http2=True) as client:
        assert client.get(https(http1, "/")).http_version == "HTTP/1.1", "h2 asked for, http/1.1 served"
    cfg = edge_config(app.addr, crt, key, protocol="opaque", service="echo")
    cfg["services"].append({"name": "echo", "endpoints": [{"addr": echo.addr}]})
    cfg["routes"] = []
    opaque = proxy(cfg)
    context = site.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(opaque.addresses["edge"], timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() is None
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # passed through as bytes, not parsed
            received = b""
            while len(received) < 24 and (chunk := tls.recv(4096)):
                received += chunk
    assert received == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_policy_applies_to_an_edge_listener(site, backend, proxy):
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    cfg = edge_config(app.addr, crt, key)
    cfg["policy"] = {"rules": [{"listener": "edge", "path_prefix": "/admin", "networks": ["10.0.0.0/8"]}]}
    edge = proxy(cfg)
    with httpx.Client(verify=site.client_context()) as client:
        assert client.get(https(edge, "/admin/users")).status_code == 403, "127.0.0.1 is not in 10/8"
        assert client.get(https(edge, "/")).status_code == 200
    assert app.requests == 1
    # An outbound listener's rule would never be applied: refused, naming it.
    cfg["listeners"][0]["direction"] = "outbound"
    with pytest.raises(ConfigError, match=r"policy\.rules\[0\]\.listener: 'edge' is an outbound listener"):
        Proxy(cfg)


def test_curl_verifies_the_edge_certificate_against_the_site_ca(site, backend, proxy):
    require_tool("curl", "curl")
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    edge = proxy(edge_config(app.addr, crt, key))
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(site.pem), https(edge, "/curl")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "path=/curl" in done.stdout
    # Without the site's CA the same certificate is not trusted: it is not a mesh or system one.
    refused = subprocess.run(["curl", "-sS", https(edge, "/")], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "certificate" in refused.stderr


def test_plaintext_to_an_edge_port_is_refused_and_counted(site, backend, proxy):
    app = backend(name="app")
    crt, key, _ = site.issue("edge")
    edge = proxy(edge_config(app.addr, crt, key))
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert closed_unanswered(edge.addresses["edge"], request), "closed, unanswered"
    assert app.requests == 0
    series = 'tcp_errors_total{direction="inbound",listener="edge",error="tls_plaintext_refused"} 1'
    wait_until(lambda: series in edge.metrics().splitlines(), what="the refusal counted")


def test_a_listener_certificate_is_checked_and_named_by_field(site, tmp_path):
    crt, key, _ = site.issue("edge")
    _, other_key, _ = site.issue("other")
    cfg = edge_config("127.0.0.1:9", crt, key)
    listener = cfg["listeners"][0]

    without = {**cfg, "listeners": [{k: v for k, v in listener.items() if k != "certificate"}]}
    with pytest.raises(ConfigError, match=r"listeners\[0\]: tls = \"server\" needs a certificate"):
        Proxy(without)
    mesh = {**cfg, "listeners": [{**listener, "tls": "mesh"}]}
    with pytest.raises(ConfigError, match=r"a certificate is for tls = \"server\""):
        Proxy(mesh)

    def check(config: dict[str, Any]) -> str:
        path = tmp_path / "edge.yaml"  # JSON is YAML
        path.write_text(json.dumps(config))
        done = subprocess.run([*MESHCORE, "check", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        return done.stderr

    mismatched = {
        **cfg,
        "listeners": [{**listener, "certificate": {"cert": str(crt), "key": str(other_key)}}],
    }
    assert "listeners[0].certificate.key" in check(mismatched)
    assert "do not match" in check(mismatched)
    missing = {
        **cfg,
        "listeners": [{**listener, "certificate": {"cert": str(tmp_path / "nope.crt"), "key": str(key)}}],
    }
    assert f"listeners[0].certificate.cert: cannot read {tmp_path / 'nope.crt'}" in check(missing)


def test_renewed_certificate_files_are_served_from_the_next_handshake(site, backend, tmp_path):
    app = backend(name="app")
    crt, key, first = site.issue("edge")
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""watch = true

[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
tls = "server"
certificate = {{ cert = "{crt.name}", key = "{key.name}" }}

[[routes]]
listener = "edge"
backends = [{{ service = "app" }}]

[[services]]
name = "app"
endpoints = [{{ addr = "{app.addr}" }}]
"""
    )
    run = subprocess.Popen(
        [*MESHCORE, "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = OutputLines(run.stdout)
        port = int(lines.wait_for(r"listener edge on 127\.0\.0\.1:(\d+)").rsplit(":", 1)[1])
        lines.wait_for("ready")
        assert served_serial(port, site) == first
        with httpx.Client(verify=site.client_context()) as kept:
            assert kept.get(f"https://localhost:{port}/before").status_code == 200
            # A renewal as certbot makes one: new files moved into place.
            new_crt, new_key, second = site.issue("renewed")
            new_key.replace(key)
            new_crt.replace(crt)
            wait_until(
                lambda: served_serial(port, site) == second, timeout=20, what="the renewed certificate"
            )
            lines.wait_for("listener certificates renewed: edge")
            # The connection opened before the renewal goes on.
            assert kept.get(f"https://localhost:{port}/after").status_code == 200
    finally:
        run.terminate()
        run.wait(10)
