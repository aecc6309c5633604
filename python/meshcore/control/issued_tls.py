"""The control plane's own certificate when it holds the mesh CA (`control serve --identity-ca`):
issued by it to itself, so no --tls-cert/--tls-key/--trust-anchors are needed, and renewed at 70 %
of its lifetime.

Its names: the SPIFFE ID `spiffe://<trust domain>/<name>` (name `control` by default; what a
proxy's `[discovery] control_identity` checks) and the hosts proxies reach it by (DNS or IP SANs:
gRPC checks the host, as HTTPS does). Proxies' certificates must chain to the CA's trust anchor.

gRPC asks `_fetch` before every TLS handshake, so a renewal is done there, on the first new
connection past the renewal time: a certificate only matters in a handshake, and no timer thread
is needed. A rotated CA (new issuer or anchors bundle on disk, as `meshcore identity
rotate-anchor` writes them) is noticed there too: the certificate is issued again and the roots
that check proxies become the new bundle.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Callable, Optional

import grpc
from cryptography import x509

from ..identity.ca import (
    PathLike,
    _host_name,
    ca_stamp,
    check_ttl,
    key_pem,
    load_issuer,
    new_key,
    refresh_delay,
    spiffe_id,
    utc_now,
)

__all__ = ["IssuedServerTls", "default_hosts"]

log = logging.getLogger("meshcore.control")

Clock = Callable[[], datetime]


def default_hosts(bind_host: str) -> list[str]:
    """The names a certificate for a server bound to `bind_host` carries when none are given: that
    host, and loopback's names for a loopback or wildcard bind."""
    host = bind_host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host]  # a DNS name
    if address.is_unspecified:
        return ["localhost", "127.0.0.1", "::1"]
    return ["localhost", host] if address.is_loopback else [host]


class IssuedServerTls:
    """Server credentials for the control plane, from the CA in `ca_dir` (as `identity init` makes
    it). `clock` exists so tests can move past the renewal time."""

    def __init__(
        self,
        ca_dir: PathLike,
        *,
        name: str = "control",
        hosts: Sequence[str] = (),
        ttl: timedelta = timedelta(hours=24),
        clock: Clock = utc_now,
    ) -> None:
        check_ttl(ttl)
        self._ca_dir = ca_dir
        self._stamp = ca_stamp(ca_dir)
        self._issuer = load_issuer(ca_dir)
        self.spiffe_id = spiffe_id(self._issuer.trust_domain, name)
        self.hosts = list(hosts)
        self._names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(self.spiffe_id)]
        self._names += [_host_name(h) for h in self.hosts]
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self.renewals = 0
        self._issue()

    @property
    def trust_anchors_pem(self) -> bytes:
        return self._issuer.trust_anchor_pem

    @property
    def chain_pem(self) -> bytes:
        return self._chain

    @property
    def not_after(self) -> datetime:
        return self._not_after

    def credentials(self) -> grpc.ServerCredentials:
        """mTLS server credentials whose certificate is renewed as it ages."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), self._fetch, require_client_authentication=True
        )

    def _issue(self) -> None:
        key = new_key()
        leaf = self._issuer.sign_leaf(key.public_key(), self._names, self._ttl)
        self._chain = self._issuer.chain_pem(leaf)
        self._key = key_pem(key)
        self._not_after = leaf.not_valid_after_utc
        now = self._clock()
        self._renew_at = now + timedelta(
            seconds=refresh_delay(leaf.not_valid_before_utc, self._not_after, now)
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self._key, self._chain)], root_certificates=self._issuer.trust_anchor_pem
        )

    def _fetch(self) -> Optional[grpc.ServerCertificateConfiguration]:
        """None (keep the current certificate) until it is due for renewal or the CA changed on
        disk; then a new one."""
        if self._clock() < self._renew_at and ca_stamp(self._ca_dir) == self._stamp:
            return None
        with self._lock:
            stamp = ca_stamp(self._ca_dir)
            if self._clock() < self._renew_at and stamp == self._stamp:  # done by another handshake
                return None
            try:
                if stamp != self._stamp:
                    self._issuer = load_issuer(self._ca_dir)
                    self._stamp = stamp
                    log.info("the CA in %s changed: reissuing with its issuer and anchors", self._ca_dir)
                self._issue()
            except Exception as e:  # noqa: BLE001 - keep serving with the current one, try again next time
                log.error("renewing the control plane's certificate failed: %s; keeping the current one", e)
                return None
            self.renewals += 1
        log.info(
            "renewed the control plane's certificate (%s, valid until %s)", self.spiffe_id, self._not_after
        )
        return self._configuration()
