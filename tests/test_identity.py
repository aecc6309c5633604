"""Workload identity: the CA, leaf certificates, the certify service and `meshcore identity`."""

from __future__ import annotations

import json
import signal
import ssl
import stat
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import MESHCORE
from meshcore.errors import TlsError
from meshcore.identity import (
    IdentityService,
    cert_info,
    init_ca,
    issue,
    refresh_delay,
    request_certificate,
    sign_csr,
    spiffe_id,
)

WEB = "ns/default/sa/web"
DB = "ns/default/sa/db"
TOKENS = {"tok-web": WEB, "tok-db": DB}
YEAR = timedelta(days=365)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("identity") / "ca"
    init_ca(directory)
    return directory


@pytest.fixture(scope="module")
def service(ca: Path) -> Iterator[IdentityService]:
    with IdentityService(ca, tokens=TOKENS, ttl=timedelta(hours=2)) as svc:
        yield svc


def anchor(ca: Path) -> bytes:
    return (ca / "trust-anchor.pem").read_bytes()


def load(ca: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((ca / name).read_bytes())


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def uri_sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def csr_pem(key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName] | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def certify(service: IdentityService, ca: Path, body: bytes, token: str | None = "tok-web") -> httpx.Response:
    """A raw POST /v1/certify, for the responses request_certificate turns into exceptions."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cadata=anchor(ca).decode())
    return httpx.post(
        f"{service.url}/v1/certify", content=body, headers=headers, verify=context, trust_env=False
    )


def certify_json(name: str, csr: str) -> bytes:
    return json.dumps({"name": name, "csr": csr}).encode()


def approx(actual: timedelta, expected: timedelta, slack: timedelta = timedelta(seconds=30)) -> bool:
    return abs(actual - expected) <= slack


# --- the CA -----------------------------------------------------------------------------------------


def test_init_writes_a_p256_root_and_issuer(ca: Path):
    assert (ca / "trust-domain").read_text().strip() == "mesh.local"
    for name in ("trust-anchor.key", "issuer.key"):
        assert stat.S_IMODE((ca / name).stat().st_mode) == 0o600
        key = serialization.load_pem_private_key((ca / name).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    root, issuer = load(ca, "trust-anchor.pem"), load(ca, "issuer.pem")
    root.verify_directly_issued_by(root)
    issuer.verify_directly_issued_by(root)
    for cert, path_length in ((root, 1), (issuer, 0)):
        assert approx(cert.not_valid_after_utc - datetime.now(timezone.utc), YEAR)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca and constraints.value.path_length == path_length
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
        assert not usage.value.digital_signature


def test_init_refuses_to_overwrite_a_ca(ca: Path):
    before = {p.name: p.read_bytes() for p in ca.iterdir()}
    with pytest.raises(TlsError, match="refusing to overwrite"):
        init_ca(ca)
    assert {p.name: p.read_bytes() for p in ca.iterdir()} == before


def test_init_rejects_a_bad_trust_domain(tmp_path: Path):
    with pytest.raises(ValueError, match="trust domain"):
        init_ca(tmp_path / "ca", trust_domain="Mesh Local")
    assert not (tmp_path / "ca").exists()


def test_spiffe_id():
    assert spiffe_id("mesh.local", WEB) == "spiffe://mesh.local/ns/default/sa/web"
    assert spiffe_id("example.org", "a.b_c-D9") == "spiffe://example.org/a.b_c-D9"


@pytest.mark.parametrize(
    "name",
    ["", "/ns/web", "ns/web/", "ns//web", "ns/../web", ".", "ns/we b", "ns/wéb", "spiffe://evil/x", "a?b"],
)
def test_bad_names_are_rejected(ca: Path, name: str):
    with pytest.raises(ValueError, match="invalid identity name"):
        spiffe_id("mesh.local", name)
    with pytest.raises(ValueError, match="invalid identity name"):
        issue(ca, name)


# --- leaf certificates ------------------------------------------------------------------------------


def test_issue_writes_a_verifiable_chain(ca: Path, tmp_path: Path):
    chain_pem, key_pem = issue(ca, WEB, ttl=timedelta(hours=2), out_prefix=tmp_path / "web")
    assert (tmp_path / "web.crt").read_bytes() == chain_pem
    assert (tmp_path / "web.key").read_bytes() == key_pem
    assert stat.S_IMODE((tmp_path / "web.key").stat().st_mode) == 0o600

    leaf, issuer = certs(chain_pem)
    assert issuer == load(ca, "issuer.pem")
    leaf.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(load(ca, "trust-anchor.pem"))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == leaf.public_key()

    assert uri_sans(leaf) == [x509.UniformResourceIdentifier("spiffe://mesh.local/ns/default/sa/web")]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    now = datetime.now(timezone.utc)
    assert approx(leaf.not_valid_after_utc - now, timedelta(hours=2))
    assert approx(now - leaf.not_valid_before_utc, timedelta(minutes=1))  # room for clock skew

    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            ca / "trust-anchor.pem",
            "-untrusted",
            ca / "issuer.pem",
            tmp_path / "leaf.pem",
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_issue_replaces_a_key_without_inheriting_its_mode(ca: Path, tmp_path: Path):
    (tmp_path / "web.key").write_text("old")
    (tmp_path / "web.key").chmod(0o644)
    _, key_pem = issue(ca, WEB, out_prefix=tmp_path / "web")
    assert (tmp_path / "web.key").read_bytes() == key_pem
    assert stat.S_IMODE((tmp_path / "web.key").stat().st_mode) == 0o600


def test_a_leaf_never_outlives_its_issuer(ca: Path):
    leaf, issuer = certs(issue(ca, WEB, ttl=2 * YEAR)[0])
    assert leaf.not_valid_after_utc == issuer.not_valid_after_utc


def test_sign_csr_takes_the_identity_from_the_name_only(ca: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(key, [x509.UniformResourceIdentifier("spiffe://evil/ns/x"), x509.DNSName("evil.example")])
    leaf, _ = certs(sign_csr(ca, csr, DB, ttl=timedelta(hours=1)))
    assert leaf.public_key() == key.public_key()
    assert uri_sans(leaf) == [x509.UniformResourceIdentifier("spiffe://mesh.local/ns/default/sa/db")]
    assert leaf.subject == x509.Name([])


def test_sign_csr_accepts_only_p256_keys_with_a_valid_signature(ca: Path):
    with pytest.raises(ValueError, match="P-256"):
        sign_csr(ca, csr_pem(ec.generate_private_key(ec.SECP384R1())), WEB)
    with pytest.raises(ValueError):
        sign_csr(ca, "not a CSR", WEB)
    with pytest.raises(ValueError, match="signature"):
        sign_csr(ca, tampered_csr(), WEB)


def tampered_csr() -> str:
    """A well-formed CSR whose signature does not match its content (one bit of the key flipped)."""
    csr = x509.load_pem_x509_csr(csr_pem(ec.generate_private_key(ec.SECP256R1())).encode())
    key = csr.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_key = other.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    der = csr.public_bytes(serialization.Encoding.DER).replace(key, other_key)
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()


def test_cert_info_reads_the_first_certificate(ca: Path):
    chain_pem, _ = issue(ca, WEB, ttl=timedelta(hours=3))
    info = cert_info(chain_pem)
    leaf = certs(chain_pem)[0]
    assert info == {
        "spiffe_id": "spiffe://mesh.local/ns/default/sa/web",
        "not_before": leaf.not_valid_before_utc,
        "not_after": leaf.not_valid_after_utc,
    }
    assert info["not_after"].tzinfo == timezone.utc
    assert cert_info(anchor(ca))["spiffe_id"] is None


# --- refresh ----------------------------------------------------------------------------------------


def test_refresh_delay_is_70_percent_of_the_lifetime():
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    end = start + timedelta(hours=10)
    assert refresh_delay(start, end, now=start) == pytest.approx(7 * 3600)
    assert refresh_delay(start, end, now=start + timedelta(hours=2)) == pytest.approx(5 * 3600)
    now = datetime.now(timezone.utc)  # the default for `now`
    assert refresh_delay(now - timedelta(hours=1), now + timedelta(hours=9)) == pytest.approx(6 * 3600, abs=5)


def test_refresh_delay_is_clamped_between_10_seconds_and_24_hours():
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert refresh_delay(start, start + timedelta(seconds=5), now=start) == 10
    assert refresh_delay(start, start + timedelta(hours=1), now=start + timedelta(hours=2)) == 10  # expired
    assert refresh_delay(start, start + timedelta(days=30), now=start) == 24 * 3600


# --- the certify service ----------------------------------------------------------------------------


def test_request_certificate_end_to_end(service: IdentityService, ca: Path):
    chain_pem, key_pem, not_after = request_certificate(service.url, "tok-web", WEB, anchor(ca))
    leaf, issuer = certs(chain_pem)
    leaf.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(load(ca, "trust-anchor.pem"))
    assert uri_sans(leaf) == [x509.UniformResourceIdentifier("spiffe://mesh.local/ns/default/sa/web")]
    assert serialization.load_pem_private_key(key_pem, password=None).public_key() == leaf.public_key()
    assert not_after == leaf.not_valid_after_utc
    assert approx(not_after - datetime.now(timezone.utc), timedelta(hours=2))


def test_the_service_answers_with_json(service: IdentityService, ca: Path):
    r = certify(service, ca, certify_json(WEB, csr_pem(ec.generate_private_key(ec.SECP256R1()))))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    reply = r.json()
    assert reply["spiffe_id"] == "spiffe://mesh.local/ns/default/sa/web"
    assert reply["not_after"] == int(cert_info(reply["certificate"].encode())["not_after"].timestamp())


def test_the_service_certificate_names_localhost(service: IdentityService, ca: Path):
    context = ssl.create_default_context(cadata=anchor(ca).decode())
    r = httpx.get(f"https://localhost:{service.address[1]}/v1/trust-anchors", verify=context, trust_env=False)
    assert r.status_code == 200
    assert r.content == anchor(ca)
    assert service.address[0] == "127.0.0.1" and service.url == f"https://127.0.0.1:{service.address[1]}"


def test_a_token_is_valid_for_its_own_name_only(service: IdentityService, ca: Path):
    with pytest.raises(TlsError, match="403") as refused:
        request_certificate(service.url, "tok-web", DB, anchor(ca))
    assert str(refused.value).endswith(f"token not valid for {DB}")
    assert WEB not in str(refused.value)


def test_unknown_and_missing_tokens_get_401(service: IdentityService, ca: Path):
    with pytest.raises(TlsError, match="401"):
        request_certificate(service.url, "tok-nope", WEB, anchor(ca))
    r = certify(service, ca, certify_json(WEB, csr_pem(ec.generate_private_key(ec.SECP256R1()))), token=None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_the_service_rejects_p384_and_bad_csrs(service: IdentityService, ca: Path):
    r = certify(service, ca, certify_json(WEB, csr_pem(ec.generate_private_key(ec.SECP384R1()))))
    assert r.status_code == 400 and "P-256" in r.json()["error"]
    assert certify(service, ca, certify_json(WEB, tampered_csr())).status_code == 400
    assert certify(service, ca, certify_json(WEB, "-----BEGIN CERTIFICATE REQUEST-----\n")).status_code == 400


def test_the_service_ignores_names_in_the_csr(service: IdentityService, ca: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(key, [x509.UniformResourceIdentifier("spiffe://evil/ns/default/sa/admin")])
    r = certify(service, ca, certify_json(WEB, csr))
    assert r.status_code == 200
    leaf = certs(r.json()["certificate"].encode())[0]
    assert uri_sans(leaf) == [x509.UniformResourceIdentifier("spiffe://mesh.local/ns/default/sa/web")]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", json.dumps({"name": WEB}).encode(), json.dumps({"name": 1, "csr": "x"}).encode()],
)
def test_the_service_rejects_malformed_requests(service: IdentityService, ca: Path, body: bytes):
    assert certify(service, ca, body).status_code == 400


def test_the_service_rejects_bad_names_and_large_bodies(service: IdentityService, ca: Path):
    r = certify(service, ca, certify_json("ns/../web", csr_pem(ec.generate_private_key(ec.SECP256R1()))))
    assert r.status_code == 400 and "invalid identity name" in r.json()["error"]
    assert certify(service, ca, b"x" * (64 * 1024 + 1)).status_code == 413


def test_tokens_from_a_file(ca: Path, tmp_path: Path):
    (tmp_path / "tokens.json").write_text(json.dumps({"tok-web": WEB}))
    (tmp_path / "tokens.txt").write_text(f"# bootstrap tokens\n\ntok-web {WEB}\n")
    for path in (tmp_path / "tokens.json", tmp_path / "tokens.txt"):
        with IdentityService(ca, tokens=path) as svc:
            assert cert_info(request_certificate(svc.url, "tok-web", WEB, anchor(ca))[0])[
                "spiffe_id"
            ].endswith(WEB)
    (tmp_path / "bad.txt").write_text(f"tok-web {WEB} extra\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        IdentityService(ca, tokens=tmp_path / "bad.txt")


def test_the_service_checks_token_names_at_startup(ca: Path):
    with pytest.raises(ValueError, match="invalid identity name"):
        IdentityService(ca, tokens={"tok": "ns/../web"})


# --- `meshcore identity` ----------------------------------------------------------------------------


def meshcore(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHCORE, "identity", *map(str, args)], capture_output=True, text=True, timeout=30
    )


def test_cli_init_and_issue(tmp_path: Path):
    ca = tmp_path / "ca"
    r = meshcore("init", ca, "--trust-domain", "example.org", "--ttl", "48h")
    assert r.returncode == 0, r.stderr
    assert approx(
        load(ca, "issuer.pem").not_valid_after_utc - datetime.now(timezone.utc), timedelta(hours=48)
    )

    r = meshcore("issue", ca, "--name", WEB, "--ttl", "10s", "--out", tmp_path / "web")
    assert r.returncode == 0, r.stderr
    info = cert_info((tmp_path / "web.crt").read_bytes())
    assert info["spiffe_id"] == "spiffe://example.org/ns/default/sa/web"
    assert info["not_after"] - info["not_before"] == timedelta(minutes=1, seconds=10)
    assert stat.S_IMODE((tmp_path / "web.key").stat().st_mode) == 0o600


def test_cli_errors_exit_1_with_a_message(tmp_path: Path):
    ca = tmp_path / "ca"
    assert meshcore("init", ca).returncode == 0
    r = meshcore("init", ca)
    assert r.returncode == 1 and "TlsError" in r.stderr and "refusing to overwrite" in r.stderr
    r = meshcore("issue", ca, "--name", "ns/we b", "--out", tmp_path / "web")
    assert r.returncode == 1 and r.stderr.startswith("meshcore: error: invalid identity name")
    assert not (tmp_path / "web.crt").exists()


def test_cli_serve_until_sigterm(ca: Path, tmp_path: Path):
    (tmp_path / "tokens").write_text(f"tok-db {DB}\n")
    proc = subprocess.Popen(
        [
            *MESHCORE,
            "identity",
            "serve",
            ca,
            "--bind",
            "127.0.0.1:0",
            "--tokens",
            tmp_path / "tokens",
            "--ttl",
            "1h",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("identity service on https://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        chain_pem, _, not_after = request_certificate(url, "tok-db", DB, anchor(ca))
        assert cert_info(chain_pem)["spiffe_id"] == "spiffe://mesh.local/ns/default/sa/db"
        assert approx(not_after - datetime.now(timezone.utc), timedelta(hours=1))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_cli_serve_takes_service_account_tokens_checked_by_tokenreview(ca: Path, tmp_path: Path):
    """`identity serve --token-review`: a pod's identity follows from its ServiceAccount, with a
    token meant for `--token-audience`; bootstrap tokens still work beside it."""
    from kube_fake import FakeKubeApi

    (tmp_path / "kube").mkdir()
    kube = FakeKubeApi(tmp_path / "kube").start()
    (tmp_path / "tokens").write_text(f"tok-db {DB}\n")
    proc = subprocess.Popen(
        [
            *MESHCORE,
            "identity",
            "serve",
            ca,
            "--bind",
            "127.0.0.1:0",
            "--tokens",
            tmp_path / "tokens",
            "--token-review",
            kube.kubeconfig(),
            "--token-audience",
            "meshcore",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("identity service on https://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        web = "ns/shop/sa/web"
        chain_pem, _, _ = request_certificate(url, "token-web-meshcore", web, anchor(ca))
        assert cert_info(chain_pem)["spiffe_id"] == "spiffe://mesh.local/ns/shop/sa/web"
        chain_pem, _, _ = request_certificate(url, "tok-db", DB, anchor(ca))
        assert cert_info(chain_pem)["spiffe_id"] == "spiffe://mesh.local/ns/default/sa/db"
        with pytest.raises(TlsError, match="403: token not valid for ns/shop/sa/api"):
            request_certificate(url, "token-web-meshcore", "ns/shop/sa/api", anchor(ca))
        for refused in ("token-web", "token-alice", "forged"):  # another audience; a person; unknown
            with pytest.raises(TlsError, match="401: unknown token"):
                request_certificate(url, refused, web, anchor(ca))
        kube.stop()
        with pytest.raises(TlsError, match="503: cannot check the token"):
            request_certificate(url, "token-web-meshcore", web, anchor(ca))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        kube.stop()


def test_cli_serve_needs_a_way_to_check_tokens(ca: Path, tmp_path: Path):
    r = meshcore("serve", ca, "--bind", "127.0.0.1:0")
    assert r.returncode == 1 and "give --tokens FILE or --token-review KUBECONFIG" in r.stderr
    (tmp_path / "tokens").write_text(f"tok-db {DB}\n")
    r = meshcore("serve", ca, "--tokens", tmp_path / "tokens", "--token-audience", "meshcore")
    assert r.returncode == 1 and "--token-audience is for ServiceAccount tokens" in r.stderr
