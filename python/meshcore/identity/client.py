"""The client side of the certify API: a workload's key is made here and only its CSR is sent."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..errors import TlsError
from .ca import PEM, key_pem, new_key

__all__ = ["request_certificate"]


def request_certificate(
    issuer_url: str, token: str, name: str, trust_anchors_pem: bytes, timeout: float = 10.0
) -> tuple[bytes, bytes, datetime]:
    """Gets a certificate for `name` from an IdentityService -> (chain PEM, key PEM, not_after).

    The key is generated here and only its CSR is sent. Raises TlsError if the service refuses or
    cannot be reached.
    """
    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    request = urllib.request.Request(
        issuer_url.rstrip("/") + "/v1/certify",
        data=json.dumps({"name": name, "csr": csr.public_bytes(PEM).decode()}).encode(),
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
    return chain, key_pem(key), leaf.not_valid_after_utc


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)
