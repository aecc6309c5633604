"""Trust-anchor rotation without downtime, in the documented steps, each checked against what the
proxies' admin APIs report (`GET /identity`):

1. `add`: a new anchor is made beside the old one (`next-trust-anchor.pem` in the CA directory)
   and added to the CA's bundle and every bundle named; done when every listed proxy trusts it.
2. `issuer`: refused until every proxy trusts the new anchor; a new issuer is signed under it, and
   the identity service signs with it from its next request.
3. `roll`: waits until every proxy's certificate chains to the new anchor (workload certificates
   roll over at 70 % of their lifetime).
4. `remove`: refused while any proxy's certificate still chains to an old anchor; the old
   anchors then leave every bundle (which keep any other anchors they hold), the new one becomes
   the CA's anchor, and each old one is kept aside as `retired-<sha256>.pem`, its key deleted.

The proxies checked are the ones listed (at least one): a proxy left off the list is not asked.

`status` shows where the CA and each proxy stand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ..errors import TlsError
from . import ca

NEXT_CERT = "next-trust-anchor.pem"
NEXT_KEY = "next-trust-anchor.key"
STEPS = ("status", "add", "issuer", "roll", "remove")

Say = Callable[[str], None]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, lowercase hex: how proxies name an anchor."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise TlsError(f"{path}: no such file") from None
    except ValueError as e:
        raise TlsError(f"{path}: not a PEM bundle of certificates: {e}") from None


def _bundle(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _generation_name(role: str, trust_domain: str) -> x509.Name:
    """A CA name that tells generations apart: old and new anchors (or issuers) live side by side."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{role}.{trust_domain}"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, stamp),
        ]
    )


@dataclass
class ProxyView:
    """One proxy's `GET /identity`."""

    url: str
    trusts: list[str]
    chains_to: list[str]
    spiffe_id: str | None


class Rotation:
    """The CA directory `directory`, the bundle files proxies read (`bundles`), and the proxies'
    admin URLs (`proxies`), which every check asks."""

    def __init__(
        self,
        directory: str | Path,
        bundles: Sequence[str | Path] = (),
        proxies: Sequence[str] = (),
        *,
        wait: float = 300.0,
        say: Say = print,
    ) -> None:
        self.dir = Path(directory)
        self.bundles = [Path(b) for b in bundles]
        self.proxies = [p.rstrip("/") for p in proxies]
        if not self.proxies:
            raise TlsError("rotate-anchor: name the proxies to check (--proxy ADMIN_URL, at least one)")
        self.wait = wait
        self.say = say
        self.trust_domain = (self.dir / ca.TRUST_DOMAIN_FILE).read_text().strip()

    # -- the CA's side --

    def anchors(self) -> list[x509.Certificate]:
        return _certs(self.dir / ca.TRUST_ANCHOR_CERT)

    def next_anchor(self) -> x509.Certificate | None:
        path = self.dir / NEXT_CERT
        return _certs(path)[0] if path.exists() else None

    def _need_next(self, step: str) -> x509.Certificate:
        found = self.next_anchor()
        if found is None:
            raise TlsError(f"rotate-anchor {step}: no rotation under way in {self.dir}: run `add` first")
        return found

    def _edit_bundles(self, add: x509.Certificate | None = None, drop: Sequence[str] = ()) -> None:
        """Adds `add` to, and takes the fingerprints `drop` out of, the CA's bundle and each named
        one, keeping whatever else each holds."""
        for path in [self.dir / ca.TRUST_ANCHOR_CERT, *self.bundles]:
            certs = [c for c in _certs(path) if fingerprint(c) not in drop]
            if add is not None and fingerprint(add) not in {fingerprint(c) for c in certs}:
                certs.append(add)
            ca._replace(path, _bundle(certs), 0o644)

    # -- the proxies' side --

    def views(self) -> list[ProxyView]:
        import httpx

        views = []
        for url in self.proxies:
            try:
                answer = httpx.get(f"{url}/identity", timeout=10)
            except httpx.HTTPError as e:
                raise TlsError(f"proxy {url}: cannot ask its identity: {e}") from None
            if answer.status_code != 200:
                raise TlsError(f"proxy {url}: GET /identity answered {answer.status_code}")
            body: dict[str, Any] = answer.json()
            views.append(
                ProxyView(
                    url,
                    [a["sha256"] for a in body["trust_anchors"]],
                    list(body["chains_to"]),
                    body.get("spiffe_id"),
                )
            )
        return views

    def _until(self, what: str, lagging: Callable[[ProxyView], bool]) -> None:
        """Waits (up to `wait` seconds) until no proxy is lagging; TlsError naming them if not."""
        deadline = time.monotonic() + self.wait
        while True:
            behind = [v for v in self.views() if lagging(v)]
            if not behind:
                self.say(f"every listed proxy ({len(self.proxies)}) {what}")
                return
            if time.monotonic() >= deadline:
                names = ", ".join(v.url for v in behind)
                raise TlsError(f"not every proxy {what} after {self.wait:g}s: {names}")
            time.sleep(0.5)

    # -- the steps --

    def status(self) -> None:
        upcoming = self.next_anchor()
        for c in self.anchors():
            until = f"{c.not_valid_after_utc:%Y-%m-%d}"
            self.say(f"anchor {fingerprint(c)[:16]} {c.subject.rfc4514_string()} until {until}")
        if upcoming is not None:
            self.say(f"rotation under way to {fingerprint(upcoming)[:16]}")
        for v in self.views():
            trusts = ", ".join(t[:16] for t in v.trusts)
            self.say(
                f"proxy {v.url} ({v.spiffe_id}): trusts {trusts}; "
                f"its certificate chains to {_short(v.chains_to)}"
            )

    def add(self, ttl: timedelta = timedelta(days=365)) -> x509.Certificate:
        if self.next_anchor() is not None:
            raise TlsError(f"rotate-anchor add: a rotation is already under way ({self.dir / NEXT_CERT})")
        key = ca.new_key()
        name = _generation_name("root", self.trust_domain)
        anchor = ca._sign(name, key.public_key(), ca._ca_extensions(1), ca.utc_now() + ttl, key)
        ca._create(self.dir / NEXT_KEY, ca.key_pem(key), 0o600)
        ca._create(self.dir / NEXT_CERT, anchor.public_bytes(serialization.Encoding.PEM), 0o644)
        self._edit_bundles(add=anchor)
        new = fingerprint(anchor)
        self.say(f"added anchor {new[:16]} to {len(self.bundles) + 1} bundle(s)")
        self._until(f"trusts anchor {new[:16]}", lambda v: new not in v.trusts)
        return anchor

    def issuer(self, ttl: timedelta = timedelta(days=365)) -> x509.Certificate:
        anchor = self._need_next("issuer")
        new = fingerprint(anchor)
        behind = [v.url for v in self.views() if new not in v.trusts]
        if behind:
            raise TlsError(
                f"rotate-anchor issuer: refused: not every proxy trusts anchor {new[:16]} yet "
                f"({', '.join(behind)}); certificates under it would be refused there"
            )
        anchor_key = serialization.load_pem_private_key((self.dir / NEXT_KEY).read_bytes(), None)
        key = ca.new_key()
        not_after = min(ca.utc_now() + ttl, anchor.not_valid_after_utc)
        issuer = ca._sign(
            _generation_name("identity", self.trust_domain),
            key.public_key(),
            ca._ca_extensions(0),
            not_after,
            anchor_key,  # type: ignore[arg-type]
            anchor,
        )
        # The key first: a reader that sees the new certificate with the old key refuses the pair
        # and keeps its issuer until both are in place.
        ca._replace(self.dir / ca.ISSUER_KEY, ca.key_pem(key), 0o600)
        ca._replace(self.dir / ca.ISSUER_CERT, issuer.public_bytes(serialization.Encoding.PEM), 0o644)
        self.say(f"new issuer under anchor {new[:16]}; workload certificates now roll over to it")
        return issuer

    def roll(self) -> None:
        new = fingerprint(self._need_next("roll"))
        self._until(f"holds a certificate under anchor {new[:16]}", lambda v: new not in v.chains_to)

    def remove(self) -> None:
        anchor = self._need_next("remove")
        new = fingerprint(anchor)
        old = [c for c in self.anchors() if fingerprint(c) != new]
        still = [v for v in self.views() if set(v.chains_to) - {new} or new not in v.chains_to]
        if still:
            names = ", ".join(f"{v.url} (chains to {_short(v.chains_to)})" for v in still)
            raise TlsError(
                f"rotate-anchor remove: refused: live certificates still chain to an old anchor: {names}; "
                "run `roll` and wait for them to renew"
            )
        self._edit_bundles(add=anchor, drop=[fingerprint(c) for c in old])
        for c in old:
            retired = self.dir / f"retired-{fingerprint(c)}.pem"
            retired.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        ca._replace(self.dir / ca.TRUST_ANCHOR_KEY, (self.dir / NEXT_KEY).read_bytes(), 0o600)
        (self.dir / NEXT_KEY).unlink()
        (self.dir / NEXT_CERT).unlink()
        self.say(f"removed {len(old)} old anchor(s); anchor {new[:16]} is the CA's own")
        gone = {fingerprint(c) for c in old}
        self._until(f"trusts anchor {new[:16]} and no old one", lambda v: bool(gone & set(v.trusts)))


def _short(fingerprints: Sequence[str]) -> str:
    return ", ".join(f[:16] for f in fingerprints) or "none"
