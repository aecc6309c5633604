"""Workload identity, as in Linkerd: a CA, SPIFFE certificates, and the service proxies get them from.

A long-lived trust anchor signs an issuer; the issuer signs short-lived leaf certificates whose only
name is a SPIFFE ID (``spiffe://<trust domain>/<name>``). A proxy obtains its certificate by sending a
CSR together with a bootstrap token, so its private key never leaves the workload.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import TlsError

__all__ = [
    "IdentityService",
    "cert_info",
    "init_ca",
    "issue",
    "refresh_delay",
    "request_certificate",
    "sign_csr",
    "spiffe_id",
]

TRUST_ANCHOR_CERT = "trust-anchor.pem"
TRUST_ANCHOR_KEY = "trust-anchor.key"
ISSUER_CERT = "issuer.pem"
ISSUER_KEY = "issuer.key"
TRUST_DOMAIN_FILE = "trust-domain"
_CA_FILES = (TRUST_ANCHOR_CERT, TRUST_ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TRUST_DOMAIN_FILE)

_CLOCK_SKEW = timedelta(minutes=1)
_MAX_BODY = 64 * 1024
_REFRESH_AT = 0.7
_MIN_REFRESH = 10.0
_MAX_REFRESH = 24 * 3600.0
# "identity." + trust domain must fit the 64-character limit of a certificate's common name.
_MAX_TRUST_DOMAIN = 55
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_NAME_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PEM = serialization.Encoding.PEM

PathLike = Union[str, "os.PathLike[str]"]
TokenSource = Union[Mapping[str, str], PathLike]


def spiffe_id(trust_domain: str, name: str) -> str:
    """'ns/default/sa/web' -> 'spiffe://<trust_domain>/ns/default/sa/web'; ValueError for a bad name."""
    _check_trust_domain(trust_domain)
    if not all(_NAME_SEGMENT.fullmatch(s) and s not in (".", "..") for s in name.split("/")):
        raise ValueError(
            f"invalid identity name {name!r}: expected '/'-separated segments of A-Z a-z 0-9 . _ -, "
            "e.g. 'ns/default/sa/web'"
        )
    return f"spiffe://{trust_domain}/{name}"


def init_ca(
    directory: PathLike, trust_domain: str = "mesh.local", ttl: timedelta = timedelta(days=365)
) -> None:
    """Creates a trust anchor and an issuer signed by it in `directory`; refuses to replace an existing CA."""
    _check_trust_domain(trust_domain)
    if len(trust_domain) > _MAX_TRUST_DOMAIN:
        raise ValueError(f"trust domain must be at most {_MAX_TRUST_DOMAIN} characters")
    _check_ttl(ttl)
    d = Path(directory)
    existing = [name for name in _CA_FILES if (d / name).exists()]
    if existing:
        raise TlsError(f"{d} already holds a CA ({', '.join(existing)}); refusing to overwrite it")
    not_after = _now() + ttl
    root_key, issuer_key = _new_key(), _new_key()
    root = _sign(
        _common_name(f"root.{trust_domain}"), root_key.public_key(), _ca_extensions(1), not_after, root_key
    )
    issuer = _sign(
        _common_name(f"identity.{trust_domain}"),
        issuer_key.public_key(),
        _ca_extensions(0),
        not_after,
        root_key,
        root,
    )
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _create(d / TRUST_ANCHOR_KEY, _key_pem(root_key), 0o600)
        _create(d / ISSUER_KEY, _key_pem(issuer_key), 0o600)
        _create(d / TRUST_ANCHOR_CERT, root.public_bytes(_PEM), 0o644)
        _create(d / ISSUER_CERT, issuer.public_bytes(_PEM), 0o644)
        _create(d / TRUST_DOMAIN_FILE, f"{trust_domain}\n".encode(), 0o644)
    except FileExistsError as e:  # another init got there between the check and the write
        raise TlsError(f"{e.filename} appeared while creating the CA; refusing to overwrite it") from None


def issue(
    directory: PathLike,
    name: str,
    ttl: timedelta = timedelta(hours=24),
    out_prefix: Optional[PathLike] = None,
) -> tuple[bytes, bytes]:
    """A new key and a certificate for `name` -> (chain PEM: leaf then issuer, key PEM).

    With `out_prefix`, also writes `<prefix>.crt` and `<prefix>.key` (mode 0600), replacing old ones.
    """
    key = _new_key()
    chain = _load_issuer(directory).certify(key.public_key(), name, ttl)
    key_pem = _key_pem(key)
    if out_prefix is not None:
        _replace(Path(f"{out_prefix}.key"), key_pem, 0o600)
        _replace(Path(f"{out_prefix}.crt"), chain, 0o644)
    return chain, key_pem


def sign_csr(
    directory: PathLike, csr_pem: Union[bytes, str], name: str, ttl: timedelta = timedelta(hours=24)
) -> bytes:
    """Certifies the key of a P-256 CSR as `name` -> chain PEM. Names in the CSR itself are ignored."""
    return _load_issuer(directory).certify(_csr_public_key(csr_pem), name, ttl)


def refresh_delay(not_before: datetime, not_after: datetime, now: Optional[datetime] = None) -> float:
    """Seconds until a certificate should be renewed: at 70 % of its lifetime, within [10 s, 24 h]."""
    if now is None:
        now = _now()
    lifetime = (not_after - not_before).total_seconds()
    delay = _REFRESH_AT * lifetime - (now - not_before).total_seconds()
    return min(max(delay, _MIN_REFRESH), _MAX_REFRESH)


def cert_info(pem: Union[bytes, str]) -> dict[str, Any]:
    """spiffe_id (the first URI SAN, or None), not_before and not_after of the first certificate in `pem`."""
    cert = x509.load_pem_x509_certificates(_as_bytes(pem))[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "spiffe_id": uris[0] if uris else None,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
    }


def request_certificate(
    issuer_url: str, token: str, name: str, trust_anchors_pem: bytes, timeout: float = 10.0
) -> tuple[bytes, bytes, datetime]:
    """Gets a certificate for `name` from an IdentityService -> (chain PEM, key PEM, not_after).

    The key is generated here and only its CSR is sent. Raises TlsError if the service refuses or
    cannot be reached.
    """
    key = _new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    request = urllib.request.Request(
        issuer_url.rstrip("/") + "/v1/certify",
        data=json.dumps({"name": name, "csr": csr.public_bytes(_PEM).decode()}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cadata=trust_anchors_pem.decode())
    # Trust only the mesh's anchors, and ignore *_PROXY variables: the issuer is reached directly.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise TlsError(f"identity service answered {e.code}: {_error_message(e)}") from None
    except OSError as e:
        raise TlsError(f"cannot reach the identity service at {issuer_url}: {e}") from None
    try:
        chain = json.loads(body)["certificate"].encode()
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TlsError("identity service sent a malformed response") from None
    if leaf.public_key() != key.public_key():
        raise TlsError("identity service returned a certificate for another key")
    return chain, _key_pem(key), leaf.not_valid_after_utc


class IdentityService:
    """The certify API over HTTPS, served from a daemon thread until close().

    `tokens` maps each bootstrap token to the one identity name it may request; it is a mapping or a
    file holding a JSON object or lines of "token name".
    """

    def __init__(
        self,
        directory: PathLike,
        bind: str = "127.0.0.1:0",
        *,
        tokens: TokenSource,
        ttl: timedelta = timedelta(hours=24),
    ) -> None:
        _check_ttl(ttl)
        self._issuer = _load_issuer(directory)
        self._tokens = _load_tokens(tokens)
        for name in self._tokens.values():
            spiffe_id(self._issuer.trust_domain, name)  # fail at startup rather than on every request
        self._ttl = ttl
        host, port = _parse_bind(bind)
        self._server = _Server((host, port), _Handler)
        self._server.service = self
        self._server.tls = self._tls_context(ipaddress.IPv4Address(host))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshcore-identity", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        # A wildcard bind is reachable on loopback, which the service certificate names.
        return f"https://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    @property
    def trust_anchors_pem(self) -> bytes:
        return self._issuer.trust_anchor_pem

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> IdentityService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tls_context(self, host: ipaddress.IPv4Address) -> ssl.SSLContext:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
        if not host.is_unspecified and host != ipaddress.IPv4Address("127.0.0.1"):
            names.append(x509.IPAddress(host))
        key = _new_key()
        # The service holds the issuer key anyway, so its own certificate may live as long as the issuer.
        leaf = self._issuer.sign_leaf(key.public_key(), names, self._issuer.cert.not_valid_after_utc - _now())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads certificates only from files; these live in a private (0700) directory for an instant.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_file.write_bytes(self._issuer.chain_pem(leaf))
            key_file.write_bytes(_key_pem(key))
            context.load_cert_chain(cert_file, key_file)
        return context

    def _certify(self, authorization: Optional[str], body: bytes) -> dict[str, Any]:
        """One /v1/certify request -> the JSON reply; raises _HttpError to refuse it."""
        allowed = self._name_for(_bearer_token(authorization))
        if allowed is None:
            raise _HttpError(401, "unknown token")
        name, csr = _parse_certify_request(body)
        try:
            identity = spiffe_id(self._issuer.trust_domain, name)
        except ValueError as e:
            raise _HttpError(400, str(e)) from None
        if name != allowed:
            raise _HttpError(403, f"token not valid for {name}")
        try:
            leaf = self._issuer.sign_leaf(
                _csr_public_key(csr), [x509.UniformResourceIdentifier(identity)], self._ttl
            )
        except ValueError as e:
            raise _HttpError(400, str(e)) from None
        return {
            "certificate": self._issuer.chain_pem(leaf).decode(),
            "not_after": int(leaf.not_valid_after_utc.timestamp()),
            "spiffe_id": identity,
        }

    def _name_for(self, token: str) -> Optional[str]:
        # Compare against every token in constant time so response timing says nothing about them.
        found = None
        for candidate, name in self._tokens.items():
            if hmac.compare_digest(candidate.encode(), token.encode()):
                found = name
        return found


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str
    trust_anchor_pem: bytes

    def certify(self, public_key: ec.EllipticCurvePublicKey, name: str, ttl: timedelta) -> bytes:
        identity = spiffe_id(self.trust_domain, name)
        return self.chain_pem(self.sign_leaf(public_key, [x509.UniformResourceIdentifier(identity)], ttl))

    def sign_leaf(
        self, public_key: ec.EllipticCurvePublicKey, names: list[x509.GeneralName], ttl: timedelta
    ) -> x509.Certificate:
        _check_ttl(ttl)
        # A leaf outliving its issuer would be rejected from then on, so it ends no later.
        not_after = min(_now() + ttl, self.cert.not_valid_after_utc)
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            # Critical because the subject is empty: the names are all there is (RFC 5280 4.2.1.6).
            (x509.SubjectAlternativeName(names), True),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True), True),
            (
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                False,
            ),
        ]
        return _sign(x509.Name([]), public_key, extensions, not_after, self.key, self.cert)

    def chain_pem(self, leaf: x509.Certificate) -> bytes:
        return leaf.public_bytes(_PEM) + self.cert.public_bytes(_PEM)


def _load_issuer(directory: PathLike) -> _Issuer:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / ISSUER_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / ISSUER_KEY).read_bytes(), password=None)
        trust_domain = (d / TRUST_DOMAIN_FILE).read_text().strip()
        anchor = (d / TRUST_ANCHOR_CERT).read_bytes()
    except FileNotFoundError as e:
        raise TlsError(
            f"no CA in {d}: {e.filename} is missing (create one with `meshcore identity init`)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TlsError(f"{d / ISSUER_KEY} is not the key of {d / ISSUER_CERT}")
    if cert.not_valid_after_utc <= _now():
        raise TlsError(f"the issuer in {d} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    _check_trust_domain(trust_domain)
    return _Issuer(cert, key, trust_domain, anchor)


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
    not_after: datetime,
    signer_key: ec.EllipticCurvePrivateKey,
    signer: Optional[x509.Certificate] = None,
) -> x509.Certificate:
    """A certificate signed by `signer` (self-signed without one), valid from a minute ago."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject if signer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _CLOCK_SKEW)
        .not_valid_after(not_after)
        # Key identifiers let verifiers (strict ones insist) match each certificate to its issuer.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer_key, hashes.SHA256())


def _ca_extensions(path_length: int) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(key_cert_sign=True, crl_sign=True), True),
    ]


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment")
    usages += ("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{**dict.fromkeys(usages, False), **enabled})


def _csr_public_key(csr_pem: Union[bytes, str]) -> ec.EllipticCurvePublicKey:
    """The P-256 key of a correctly self-signed CSR; ValueError otherwise."""
    csr = x509.load_pem_x509_csr(_as_bytes(csr_pem))
    try:
        key = csr.public_key()
    except UnsupportedAlgorithm:
        raise ValueError("CSR key must be ECDSA P-256") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("CSR key must be ECDSA P-256")
    if not csr.is_signature_valid:
        raise ValueError("CSR signature does not verify")
    return key


def _load_tokens(tokens: TokenSource) -> dict[str, str]:
    table = dict(tokens) if isinstance(tokens, Mapping) else _parse_tokens(Path(tokens))
    if not table:
        raise ValueError("no bootstrap tokens configured")
    return table


def _parse_tokens(path: Path) -> dict[str, str]:
    """A JSON object or lines of "token name" ('#' comments). Errors never quote a token."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        table = json.loads(text)
        if not all(isinstance(v, str) for v in table.values()):
            raise ValueError(f"{path}: every token must map to an identity name string")
        return table
    table = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'token name'")
        if fields[0] in table:
            raise ValueError(f"{path}:{lineno}: duplicate token")
        table[fields[0]] = fields[1]
    return table


def _parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"expected an IPv4 'ip:port' to bind, got {bind!r}") from None
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected an IPv4 'ip:port' to bind, got {bind!r}")
    return host, int(port)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bearer_token(authorization: Optional[str]) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HttpError(401, "missing bearer token")
    return token.strip()


def _parse_certify_request(body: bytes) -> tuple[str, str]:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        raise _HttpError(400, "body is not JSON") from None
    if not isinstance(request, dict) or not all(isinstance(request.get(k), str) for k in ("name", "csr")):
        raise _HttpError(400, 'expected {"name": "<identity name>", "csr": "<PEM>"}')
    return request["name"], request["csr"]


class _Server(ThreadingHTTPServer):
    service: IdentityService
    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a client that stalls it
        # cannot block accept() for everyone else.
        request.settimeout(_Handler.timeout)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return
        with connection:
            super().finish_request(connection, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client going away is no error of ours
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 10  # seconds a client may stall before its connection is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the service runs inside other programs and must not write to their output."""

    def do_GET(self) -> None:
        if self.path == "/v1/trust-anchors":
            self._send(200, self.server.service.trust_anchors_pem, "application/x-pem-file")
        else:
            self._send_error(_HttpError(404, "not found"))

    def do_POST(self) -> None:
        try:
            if self.path != "/v1/certify":
                raise _HttpError(404, "not found")
            reply = self.server.service._certify(self.headers.get("Authorization"), self._read_body())
        except _HttpError as e:
            self._send_error(e)
            return
        self._send(200, json.dumps(reply).encode(), "application/json")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise _HttpError(411, "Content-Length required")
        if int(length) > _MAX_BODY:
            raise _HttpError(413, f"body larger than {_MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def _send_error(self, error: _HttpError) -> None:
        # Close after an error: an unread body must not be taken for the next request.
        headers = {"Connection": "close"}
        if error.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        self._send(error.status, json.dumps({"error": str(error)}).encode(), "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Optional[dict[str, str]] = None
    ) -> None:
        self.send_response(status)
        for name, value in {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            **(headers or {}),
        }.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)


def _create(path: Path, data: bytes, mode: int) -> None:
    """Writes a new file, created with `mode` so that a key is never readable by others, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Writes `path` via a private temporary file renamed over it: no half-written file is ever seen,
    and a key does not inherit the looser mode of a file it replaces."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}: use a-z 0-9 . _ -, e.g. 'mesh.local'")


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")


def _as_bytes(data: Union[bytes, str]) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _now() -> datetime:
    return datetime.now(timezone.utc)
