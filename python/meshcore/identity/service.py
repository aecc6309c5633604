"""The identity service: the certify API over HTTPS, a Starlette app on uvicorn (see https.py).

- ``POST /v1/certify`` with a bootstrap token as bearer and ``{"name": ..., "csr": <PEM>}``
  answers ``{"certificate": <chain PEM>, "not_after": <unix time>, "spiffe_id": ...}``;
- ``GET /v1/trust-anchors`` answers the trust anchors' PEM.

A refusal is ``{"error": "<why>"}`` with its status, and closes the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import tempfile
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Union

from cryptography import x509
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import TlsError
from .bootstrap_tokens import StaticTokens, TokenChecker
from .ca import (
    Issuer,
    PathLike,
    ca_stamp,
    check_ttl,
    csr_public_key,
    key_pem,
    load_issuer,
    new_key,
    spiffe_id,
    utc_now,
)
from .https import HttpsServer, ServerLimits

log = logging.getLogger("meshcore.identity")

__all__ = ["IdentityService"]

TokenSource = Union[Mapping[str, str], PathLike, TokenChecker]


class IdentityService:
    """The certify API over HTTPS, served from a background thread until close().

    `tokens` says which identity name a bootstrap token may request: a `TokenChecker` callable
    (token -> name or None; see bootstrap_tokens), or a mapping or file for `StaticTokens`.
    `limits` bound what one client may take (ServerLimits' defaults if not given).
    A port in use raises BindError.
    """

    def __init__(
        self,
        directory: PathLike,
        bind: str = "127.0.0.1:0",
        *,
        tokens: TokenSource,
        ttl: timedelta = timedelta(hours=24),
        limits: Optional[ServerLimits] = None,
    ) -> None:
        check_ttl(ttl)
        self._directory = Path(directory)
        self._reload_lock = threading.Lock()
        self._stamp = ca_stamp(self._directory)
        self._issuer = load_issuer(directory)
        self._name_for = tokens if callable(tokens) else StaticTokens(tokens)
        for name in getattr(self._name_for, "names", list)():
            spiffe_id(self._issuer.trust_domain, name)  # fail at startup rather than on every request
        self._ttl = ttl
        self._limits = limits = limits or ServerLimits()
        host, port = _parse_bind(bind)
        self._host = ipaddress.IPv4Address(host)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._own_key = new_key()
        self._sign_own_certificate()
        self._server = HttpsServer(self._app(), host, port, self._context, limits, "identity service")

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    @property
    def url(self) -> str:
        host, port = self.address
        # A wildcard bind is reachable on loopback, which the service certificate names.
        return f"https://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    @property
    def trust_anchors_pem(self) -> bytes:
        return self._current_issuer().trust_anchor_pem

    def _current_issuer(self) -> Issuer:
        """The issuer, loaded anew when its files or the anchors bundle changed on disk (as
        `meshcore identity rotate-anchor` changes them); the service's own certificate is then
        signed again by it (with the same key, so no handshake ever sees a certificate without its
        key). A half-written or mismatched pair keeps the current issuer."""
        stamp = ca_stamp(self._directory)
        if stamp == self._stamp:
            return self._issuer
        with self._reload_lock:
            if stamp != self._stamp:
                try:
                    self._issuer = load_issuer(self._directory)
                    self._sign_own_certificate()
                    self._stamp = stamp
                    log.info("identity service: issuer reloaded from %s", self._directory)
                except (TlsError, ValueError, OSError) as e:
                    log.warning("identity service: keeping the current issuer: %s", e)
        return self._issuer

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> IdentityService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/trust-anchors", self._serve_trust_anchors, methods=["GET"]),
                Route("/v1/certify", self._serve_certify, methods=["POST"]),
            ],
            exception_handlers={_HttpError: _refusal, HTTPException: _refusal},
        )

    async def _serve_trust_anchors(self, request: Request) -> Response:
        return Response(self.trust_anchors_pem, media_type="application/x-pem-file")

    async def _serve_certify(self, request: Request) -> Response:
        body = await _read_body(request, self._limits)
        # Signing is CPU work: a worker thread does it while the event loop serves other clients.
        reply = await run_in_threadpool(self._certify, request.headers.get("authorization"), body)
        return _json(200, reply)

    def _sign_own_certificate(self) -> None:
        """Signs the service's HTTPS certificate with the current issuer into its TLS context,
        for the handshakes from now on."""
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
        if not self._host.is_unspecified and self._host != ipaddress.IPv4Address("127.0.0.1"):
            names.append(x509.IPAddress(self._host))
        key = self._own_key
        # The service holds the issuer key anyway, so its own certificate may live as long as the issuer.
        leaf = self._issuer.sign_leaf(
            key.public_key(), names, self._issuer.cert.not_valid_after_utc - utc_now()
        )
        # ssl loads certificates only from files; these live in a private (0700) directory for an instant.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_file.write_bytes(self._issuer.chain_pem(leaf))
            key_file.write_bytes(key_pem(key))
            self._context.load_cert_chain(cert_file, key_file)

    def _certify(self, authorization: Optional[str], body: bytes) -> dict[str, Any]:
        """One /v1/certify request -> the JSON reply; raises _HttpError to refuse it."""
        token = _bearer_token(authorization)
        try:
            allowed = self._name_for(token)
        except Exception as e:  # noqa: BLE001 - a checker's failure (its API down) is not "unknown token"
            raise _HttpError(503, f"cannot check the token: {type(e).__name__}: {e}") from None
        if allowed is None:
            raise _HttpError(401, "unknown token")
        name, csr = _parse_certify_request(body)
        issuer = self._current_issuer()
        try:
            identity = spiffe_id(issuer.trust_domain, name)
        except ValueError as e:
            raise _HttpError(400, str(e)) from None
        if name != allowed:
            raise _HttpError(403, f"token not valid for {name}")
        try:
            names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
            leaf = issuer.sign_leaf(csr_public_key(csr), names, self._ttl)
        except ValueError as e:
            raise _HttpError(400, str(e)) from None
        return {
            "certificate": issuer.chain_pem(leaf).decode(),
            "not_after": int(leaf.not_valid_after_utc.timestamp()),
            "spiffe_id": identity,
        }


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


async def _read_body(request: Request, limits: ServerLimits) -> bytes:
    """The request body, refused with 413 as soon as it is known to be too large: from its
    Content-Length, or while it streams in (chunked), so no more than the limit is ever held."""
    too_large = _HttpError(413, f"body larger than {limits.max_body} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body:
        raise too_large
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body:
                raise too_large

    try:
        await asyncio.wait_for(read(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise _HttpError(408, f"body not received within {limits.body_timeout:g}s") from None
    except ClientDisconnect:
        raise _HttpError(400, "the client went away before the end of the body") from None
    return bytes(body)


async def _refusal(request: Request, error: Exception) -> Response:
    """An _HttpError, or Starlette's own for an unknown path (404) or method (405), as JSON."""
    if isinstance(error, HTTPException):
        error = _HttpError(error.status_code, str(error.detail).lower(), error.headers)
    assert isinstance(error, _HttpError)
    # Close after an error: an unread body must not be taken for the next request.
    headers = {**error.headers, "Connection": "close"}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return _json(error.status, {"error": str(error)}, headers)


def _json(status: int, payload: dict[str, Any], headers: Optional[Mapping[str, str]] = None) -> Response:
    return Response(json.dumps(payload).encode(), status, headers, media_type="application/json")


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


def _parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"expected an IPv4 'ip:port' to bind, got {bind!r}") from None
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected an IPv4 'ip:port' to bind, got {bind!r}")
    return host, int(port)
