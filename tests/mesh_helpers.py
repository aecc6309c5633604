"""Builds two-proxy meshes (client -> outbound -> mTLS -> inbound -> backend) for tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshcore import identity

TRUST_DOMAIN = "mesh.local"
WEB = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web"
API = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/api"


def make_ca(directory: Path) -> Path:
    identity.init_ca(directory, trust_domain=TRUST_DOMAIN)
    return directory


def issue(ca: Path, name: str, out: Path, ttl: timedelta = timedelta(hours=24)) -> tuple[Path, Path]:
    identity.issue(ca, name, ttl=ttl, out_prefix=str(out))
    return Path(f"{out}.crt"), Path(f"{out}.key")


def issue_expired(ca: Path, name: str, out: Path) -> tuple[Path, Path]:
    """A leaf signed by the real issuer whose validity ended an hour ago."""
    now = datetime.now(timezone.utc)
    return issue_leaf(
        ca,
        [identity.spiffe_id(TRUST_DOMAIN, name)],
        out,
        not_before=now - timedelta(hours=3),
        not_after=now - timedelta(hours=1),
    )


def issue_leaf(
    ca: Path,
    uris: list[str],
    out: Path,
    *,
    not_before: Optional[datetime] = None,
    not_after: Optional[datetime] = None,
) -> tuple[Path, Path]:
    """A leaf signed by the mesh's real issuer with exactly these URI SANs
    (none, several, or ones the issuer would never write)."""
    issuer_cert = x509.load_pem_x509_certificate((ca / "issuer.pem").read_bytes())
    issuer_key = serialization.load_pem_private_key((ca / "issuer.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    crt, keyf = Path(f"{out}.crt"), Path(f"{out}.key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + (ca / "issuer.pem").read_bytes())
    keyf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return crt, keyf


def identity_files(ca: Path, cert: Path, key: Path) -> dict[str, Any]:
    return {"trust_anchors": str(ca / "trust-anchor.pem"), "cert": str(cert), "key": str(key)}


def inbound_config(
    ident: dict[str, Any],
    backend_addr: str,
    *,
    tls: str = "mesh",
    policy: Optional[dict] = None,
    protocol: str = "auto",
    service_protocol: str = "http1",
    admin: bool = False,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "identity": ident,
        "listeners": [
            {
                "name": "inbound",
                "bind": "127.0.0.1:0",
                "tls": tls,
                "direction": "inbound",
                "protocol": protocol,
                **({"service": "app"} if protocol == "opaque" else {}),
            }
        ],
        "routes": [] if protocol == "opaque" else [{"listener": "inbound", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "protocol": service_protocol, "endpoints": [{"addr": backend_addr}]}],
    }
    if policy is not None:
        cfg["policy"] = policy
    if admin:
        cfg["admin"] = "127.0.0.1:0"
    return cfg


def outbound_config(
    ident: dict[str, Any], inbound_addr: str, expected: str = API, protocol: str = "auto"
) -> dict[str, Any]:
    return {
        "identity": ident,
        "listeners": [
            {
                "name": "outbound",
                "bind": "127.0.0.1:0",
                "protocol": protocol,
                **({"service": "api"} if protocol == "opaque" else {}),
            }
        ],
        "routes": []
        if protocol == "opaque"
        else [{"listener": "outbound", "backends": [{"service": "api"}]}],
        "services": [{"name": "api", "endpoints": [{"addr": inbound_addr, "identity": expected}]}],
    }


def addr(proxy, listener: str) -> str:
    host, port = proxy.addresses[listener]
    return f"{host}:{port}"
