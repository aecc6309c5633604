"""The mesh CA on disk: a trust anchor, the issuer it signs, and the SPIFFE leaf certificates the
issuer signs, whose only name is a SPIFFE ID (``spiffe://<trust domain>/<name>``).

`Issuer`, `load_issuer` and the key helpers are shared with the rest of the package, not exported.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import TlsError

__all__ = ["cert_info", "init_ca", "issue", "refresh_delay", "sign_csr", "spiffe_id"]

TRUST_ANCHOR_CERT = "trust-anchor.pem"
TRUST_ANCHOR_KEY = "trust-anchor.key"
ISSUER_CERT = "issuer.pem"
ISSUER_KEY = "issuer.key"
TRUST_DOMAIN_FILE = "trust-domain"
_CA_FILES = (TRUST_ANCHOR_CERT, TRUST_ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TRUST_DOMAIN_FILE)

_CLOCK_SKEW = timedelta(minutes=1)
_REFRESH_AT = 0.7
_MIN_REFRESH = 10.0
_MAX_REFRESH = 24 * 3600.0
# "identity." + trust domain must fit the 64-character limit of a certificate's common name.
_MAX_TRUST_DOMAIN = 55
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_NAME_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_DNS_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
PEM = serialization.Encoding.PEM

PathLike = Union[str, "os.PathLike[str]"]


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
    check_ttl(ttl)
    d = Path(directory)
    existing = [name for name in _CA_FILES if (d / name).exists()]
    if existing:
        raise TlsError(f"{d} already holds a CA ({', '.join(existing)}); refusing to overwrite it")
    not_after = utc_now() + ttl
    root_key, issuer_key = new_key(), new_key()
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
        _create(d / TRUST_ANCHOR_KEY, key_pem(root_key), 0o600)
        _create(d / ISSUER_KEY, key_pem(issuer_key), 0o600)
        _create(d / TRUST_ANCHOR_CERT, root.public_bytes(PEM), 0o644)
        _create(d / ISSUER_CERT, issuer.public_bytes(PEM), 0o644)
        _create(d / TRUST_DOMAIN_FILE, f"{trust_domain}\n".encode(), 0o644)
    except FileExistsError as e:  # another init got there between the check and the write
        raise TlsError(f"{e.filename} appeared while creating the CA; refusing to overwrite it") from None


def issue(
    directory: PathLike,
    name: str,
    ttl: timedelta = timedelta(hours=24),
    out_prefix: Optional[PathLike] = None,
    hosts: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A new key and a certificate for `name` -> (chain PEM: leaf then issuer, key PEM).

    `hosts` adds DNS names or IP addresses beside the SPIFFE ID, for a server that clients reach by
    host name and check as HTTPS does (the control plane: gRPC checks the host).
    With `out_prefix`, also writes `<prefix>.crt` and `<prefix>.key` (mode 0600), replacing old ones.
    """
    key = new_key()
    issuer = load_issuer(directory)
    if hosts:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(issuer.trust_domain, name))]
        names += [_host_name(h) for h in hosts]
        chain = issuer.chain_pem(issuer.sign_leaf(key.public_key(), names, ttl))
    else:
        chain = issuer.certify(key.public_key(), name, ttl)
    private_pem = key_pem(key)
    if out_prefix is not None:
        _replace(Path(f"{out_prefix}.key"), private_pem, 0o600)
        _replace(Path(f"{out_prefix}.crt"), chain, 0o644)
    return chain, private_pem


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(f"invalid host {host!r}: expected a DNS name or an IP address")
    return x509.DNSName(host)


def sign_csr(
    directory: PathLike, csr_pem: Union[bytes, str], name: str, ttl: timedelta = timedelta(hours=24)
) -> bytes:
    """Certifies the key of a P-256 CSR as `name` -> chain PEM. Names in the CSR itself are ignored."""
    return load_issuer(directory).certify(csr_public_key(csr_pem), name, ttl)


def refresh_delay(not_before: datetime, not_after: datetime, now: Optional[datetime] = None) -> float:
    """Seconds until a certificate should be renewed: at 70 % of its lifetime, within [10 s, 24 h]."""
    if now is None:
        now = utc_now()
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


@dataclass(frozen=True)
class Issuer:
    """The issuing CA as loaded from its directory, with the trust anchor that verifies it."""

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
        check_ttl(ttl)
        # A leaf outliving its issuer would be rejected from then on, so it ends no later.
        not_after = min(utc_now() + ttl, self.cert.not_valid_after_utc)
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
        return leaf.public_bytes(PEM) + self.cert.public_bytes(PEM)


def ca_stamp(directory: PathLike) -> tuple[int, ...]:
    """When the issuer and the anchors bundle last changed on disk: a server holding the issuer
    compares stamps to notice a rotation (`meshcore identity rotate-anchor`)."""

    def mtime(name: str) -> int:
        try:
            return (Path(directory) / name).stat().st_mtime_ns
        except OSError:
            return -1

    return tuple(mtime(n) for n in (ISSUER_CERT, ISSUER_KEY, TRUST_ANCHOR_CERT))


def load_issuer(directory: PathLike) -> Issuer:
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
    if cert.not_valid_after_utc <= utc_now():
        raise TlsError(f"the issuer in {d} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    _check_trust_domain(trust_domain)
    return Issuer(cert, key, trust_domain, anchor)


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
        .not_valid_before(utc_now() - _CLOCK_SKEW)
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
    usages: tuple[str, ...] = ("digital_signature", "content_commitment", "key_encipherment")
    usages += ("data_encipherment", "key_agreement", "key_cert_sign", "crl_sign", "encipher_only")
    usages += ("decipher_only",)
    return x509.KeyUsage(**{**dict.fromkeys(usages, False), **enabled})


def csr_public_key(csr_pem: Union[bytes, str]) -> ec.EllipticCurvePublicKey:
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


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}: use a-z 0-9 . _ -, e.g. 'mesh.local'")


def check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")


def _as_bytes(data: Union[bytes, str]) -> bytes:
    return data.encode() if isinstance(data, str) else data


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
