"""Checking the control plane's SPIFFE ID (`[discovery] control_identity`).

gRPC Python verifies the server's chain and its host name, but cannot check a URI SAN: channel
credentials take no verify callback, and a client call has no auth context to read the peer's
certificate from after connecting. So before each connect the subscription makes one TLS
handshake of its own (Python's ssl, the same anchors, client certificate and host check), reads
the server's leaf and checks its URI SAN, and then gives gRPC that very leaf as its only root:
gRPC's TLS (BoringSSL, which accepts a trusted certificate that is not self-signed) then connects
only to a server presenting exactly the certificate that was checked. A server that renewed its
certificate in between is refused once and checked again at the next connect; nothing unchecked
ever gets through.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import TlsError

__all__ = ["checked_server_leaf"]


def checked_server_leaf(
    host: str,
    port: int,
    expected: str,
    *,
    chain_pem: bytes,
    key_pem: bytes,
    anchors_pem: bytes,
    server_name: Optional[str] = None,
    timeout: float = 5.0,
) -> bytes:
    """The server's leaf certificate (PEM) if it chains to `anchors_pem`, names the host, and has
    `expected` among its URI SANs; TlsError naming what it is instead, OSError if unreachable."""
    context = ssl.create_default_context(cadata=anchors_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # as gRPC offers it
    # ssl loads a client certificate only from files: a private (0700) directory, for an instant.
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(chain_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    try:
        with socket.create_connection((host, port), timeout) as raw:
            with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as e:
        raise TlsError(f"control plane at {host}:{port}: {e.verify_message}") from None
    except ssl.SSLError as e:
        raise TlsError(f"control plane at {host}:{port}: TLS handshake failed: {e.reason or e}") from None
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    uris = _uri_sans(leaf)
    if expected not in uris:
        actual = ", ".join(uris) if uris else "a certificate without a SPIFFE ID"
        raise TlsError(
            f"control plane at {host}:{port} is {actual}, not {expected} "
            "([discovery] control_identity); not subscribing"
        )
    return leaf.public_bytes(serialization.Encoding.PEM)


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)
