"""The identity service: the certify API over HTTPS.

- ``POST /v1/certify`` with a bootstrap token as bearer and ``{"name": ..., "csr": <PEM>}``
  answers ``{"certificate": <chain PEM>, "not_after": <unix time>, "spiffe_id": ...}``;
- ``GET /v1/trust-anchors`` answers the trust anchors' PEM.

A refusal is ``{"error": "<why>"}`` with its status, and closes the connection.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import ssl
import sys
import tempfile
import threading
from collections.abc import Mapping
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

from cryptography import x509

from .ca import PathLike, check_ttl, csr_public_key, key_pem, load_issuer, new_key, spiffe_id, utc_now

__all__ = ["IdentityService"]

_MAX_BODY = 64 * 1024

TokenSource = Union[Mapping[str, str], PathLike]


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
        check_ttl(ttl)
        self._issuer = load_issuer(directory)
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
        key = new_key()
        # The service holds the issuer key anyway, so its own certificate may live as long as the issuer.
        leaf = self._issuer.sign_leaf(
            key.public_key(), names, self._issuer.cert.not_valid_after_utc - utc_now()
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads certificates only from files; these live in a private (0700) directory for an instant.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_file.write_bytes(self._issuer.chain_pem(leaf))
            key_file.write_bytes(key_pem(key))
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
                csr_public_key(csr), [x509.UniformResourceIdentifier(identity)], self._ttl
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
