"""Workload identity, as in Linkerd: a CA, SPIFFE certificates, and the service proxies get them from.

A long-lived trust anchor signs an issuer; the issuer signs short-lived leaf certificates whose only
name is a SPIFFE ID (``spiffe://<trust domain>/<name>``). A proxy obtains its certificate by sending a
CSR together with a bootstrap token, so its private key never leaves the workload.

- ``ca``: the CA on disk, issuing and signing, SPIFFE IDs, certificate facts;
- ``bootstrap_tokens``: who a bootstrap token belongs to (StaticTokens, or any TokenChecker);
- ``service``: IdentityService, the certify API over HTTPS (served as ``https`` describes);
- ``client``: request_certificate, the client side of that API;
- ``agent``: IdentityAgent, which keeps a running proxy's certificate fresh;
- ``cli``: the ``meshcore identity`` commands.

Names are imported on first use: a proxy without identity loads neither cryptography nor asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import IdentityAgent, RenewalBackoff, next_backoff, retry_delay
    from .bootstrap_tokens import StaticTokens, TokenChecker, first_of
    from .ca import cert_info, init_ca, issue, refresh_delay, sign_csr, spiffe_id
    from .client import request_certificate
    from .https import ServerLimits
    from .service import IdentityService

__all__ = [
    "IdentityAgent",
    "IdentityService",
    "RenewalBackoff",
    "ServerLimits",
    "StaticTokens",
    "TokenChecker",
    "cert_info",
    "first_of",
    "init_ca",
    "issue",
    "next_backoff",
    "refresh_delay",
    "request_certificate",
    "retry_delay",
    "sign_csr",
    "spiffe_id",
]

_MODULE_OF = {
    "IdentityAgent": "agent",
    "RenewalBackoff": "agent",
    "next_backoff": "agent",
    "retry_delay": "agent",
    "StaticTokens": "bootstrap_tokens",
    "TokenChecker": "bootstrap_tokens",
    "first_of": "bootstrap_tokens",
    "cert_info": "ca",
    "init_ca": "ca",
    "issue": "ca",
    "refresh_delay": "ca",
    "sign_csr": "ca",
    "spiffe_id": "ca",
    "request_certificate": "client",
    "ServerLimits": "https",
    "IdentityService": "service",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
