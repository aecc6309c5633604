"""Keeps a running proxy's workload certificate fresh, off the request path.

Two sources, as configured in `[identity]`:
- files (`cert`, `key`): reloaded when they change on disk;
- the identity service (`issuer`, `token_file`, `name`): the key is made in
  this process, a CSR is sent, and the certificate is renewed at 70 % of its
  lifetime. A failed renewal is retried with jittered exponential backoff
  while the current certificate stays in use, also after it has expired
  (then an error is logged once a minute, not at every retry).

The trust anchors file is watched in both cases: a new bundle (an anchor added or removed, as
`meshcore identity rotate-anchor` does) is trusted from the next handshake on, and an anchor that
expires within 30 days is warned about at start, on each reload and once a day.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import Config
from ..errors import TlsError

__all__ = ["IdentityAgent", "RenewalBackoff", "next_backoff", "retry_delay"]

Install = Callable[[str, str], None]
InstallAnchors = Callable[[str], None]
Clock = Callable[[], datetime]
# Waits up to the given seconds; True when the agent was stopped meanwhile.
Wait = Callable[[float], bool]
# random.uniform's contract: a number between the two bounds.
Uniform = Callable[[float, float], float]

_FILE_POLL_SECONDS = 1.0
_MIN_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0
_EXPIRED_LOG_INTERVAL_SECONDS = 60.0
ANCHOR_WARNING = timedelta(days=30)
_ANCHOR_CHECK_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class RenewalBackoff:
    """How failed renewals are retried (seconds)."""

    floor: float = _MIN_BACKOFF_SECONDS  # no retry comes sooner, not even just before expiry
    cap: float = _MAX_BACKOFF_SECONDS
    expired_log_interval: float = _EXPIRED_LOG_INTERVAL_SECONDS


def next_backoff(
    attempt: int, policy: RenewalBackoff = RenewalBackoff(), uniform: Uniform = random.uniform
) -> float:
    """The wait after failed attempt number `attempt` (0 for the first): full jitter, uniform between
    the floor and a ceiling that doubles with each attempt up to the cap, so that proxies whose
    renewals failed together (the identity service went down) do not all retry in step."""
    ceiling = min(policy.cap, policy.floor * 2.0 ** min(attempt, 64))
    return uniform(policy.floor, max(ceiling, policy.floor))


def retry_delay(backoff: float, remaining: float, floor: float) -> float:
    """While the certificate is still valid (`remaining` seconds), retry no later than its expiry, a
    last chance to renew in time, but never sooner than `floor`; once it has expired, the backoff
    alone decides (clamping by a lifetime that is gone made the agent spin)."""
    if remaining > 0:
        return max(floor, min(backoff, remaining))
    return max(floor, backoff)


def _log(message: str) -> None:
    print(f"meshcore: identity: {message}", file=sys.stderr, flush=True)


class IdentityAgent:
    """`clock`, `wait` and `uniform` exist so tests can run minutes of backoff in virtual time."""

    def __init__(
        self,
        config: Config,
        *,
        backoff: RenewalBackoff = RenewalBackoff(),
        clock: Optional[Clock] = None,
        wait: Optional[Wait] = None,
        uniform: Uniform = random.uniform,
    ):
        identity = config.identity
        if identity is None:
            raise ValueError("no [identity] in the config")
        self._identity = identity
        self._paths = {
            "trust_anchors": config.resolve_path(identity.trust_anchors),
            **({"cert": config.resolve_path(identity.cert)} if identity.cert else {}),
            **({"key": config.resolve_path(identity.key)} if identity.key else {}),
            **({"token": config.resolve_path(identity.token_file)} if identity.token_file else {}),
        }
        self._stop = threading.Event()
        self._backoff = backoff
        self._clock: Clock = clock or (lambda: datetime.now(timezone.utc))
        self._wait: Wait = wait or self._stop.wait
        self._uniform = uniform
        self._thread: Optional[threading.Thread] = None
        self._anchor_thread: Optional[threading.Thread] = None
        # The time before the read: a change landing in between is then seen as a change.
        self._anchors_seen = self._mtime(self._paths["trust_anchors"])
        self.trust_anchors_pem = self._read("trust_anchors")
        warn_expiring_anchors(self.trust_anchors_pem, self._clock())
        self.refreshes = 0
        self.last_error: Optional[str] = None

    def _read(self, which: str) -> str:
        path = self._paths[which]
        try:
            return path.read_text()
        except OSError as e:
            raise TlsError(
                f"identity: cannot read {which.replace('_', ' ')} file {path}: {e.strerror}"
            ) from None

    def initial(self) -> tuple[str, str]:
        """The first certificate chain and key (PEM); blocks on the identity service if used."""
        if self._identity.issuer is None:
            # Remember what was read, so a change made before the watcher starts is not missed.
            self._seen = self._mtimes()
            return self._read("cert"), self._read("key")
        chain, key, not_after = self._request()
        self._not_after = not_after
        self._current = (chain, key)
        return chain, key

    def current(self) -> tuple[str, str]:
        """The certificate chain and key (PEM) the data plane holds now, from the identity
        service: what else in the proxy speaks mTLS (its control plane subscription) uses."""
        return self._current

    def _request(self) -> tuple[str, str, datetime]:
        from .client import request_certificate  # cryptography, only when an issuer is used

        token = self._read("token").strip()
        assert self._identity.issuer and self._identity.name
        chain, key, not_after = request_certificate(
            self._identity.issuer, token, self._identity.name, self.trust_anchors_pem.encode()
        )
        return chain.decode(), key.decode(), not_after

    def start(self, install: Install, install_anchors: Optional[InstallAnchors] = None) -> None:
        """Runs the refresh loop on a daemon thread; `install` hands PEMs to the data plane, and
        `install_anchors` a new trust anchors bundle."""
        target = self._watch_files if self._identity.issuer is None else self._renew
        self._thread = threading.Thread(target=target, args=(install,), name="meshcore-identity", daemon=True)
        self._thread.start()
        if install_anchors is not None:
            self._anchor_thread = threading.Thread(
                target=self._watch_anchors, args=(install_anchors,), name="meshcore-anchors", daemon=True
            )
            self._anchor_thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._anchor_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(5)

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return -1

    def _mtimes(self) -> tuple[float, float]:
        return self._mtime(self._paths["cert"]), self._mtime(self._paths["key"])

    def _watch_anchors(self, install_anchors: InstallAnchors) -> None:
        """Trusts a new bundle when the file changes; a bad one is refused and the current kept."""
        path = self._paths["trust_anchors"]
        checked = time.monotonic()
        while not self._stop.wait(_FILE_POLL_SECONDS):
            if time.monotonic() - checked >= _ANCHOR_CHECK_SECONDS:
                checked = time.monotonic()
                warn_expiring_anchors(self.trust_anchors_pem, self._clock())
            now = self._mtime(path)
            if now == self._anchors_seen:
                continue
            time.sleep(0.2)  # let a writer that truncates and writes finish
            self._anchors_seen = self._mtime(path)  # before the read, as at start
            try:
                pem = self._read("trust_anchors")
                install_anchors(pem)
            except Exception as e:  # noqa: BLE001 - keep the current anchors whatever went wrong
                self.last_error = str(e)
                _log(f"new trust anchors file {path} rejected, keeping the current anchors: {e}")
                continue
            self.trust_anchors_pem = pem
            _log(f"reloaded trust anchors from {path}: {len(_anchor_certs(pem))} anchor(s)")
            warn_expiring_anchors(pem, self._clock())

    def _watch_files(self, install: Install) -> None:
        seen = self._seen
        while not self._stop.wait(_FILE_POLL_SECONDS):
            now = self._mtimes()
            if now == seen:
                continue
            # A writer replaces cert and key one after the other: let both land.
            time.sleep(0.2)
            seen = self._mtimes()
            try:
                install(self._read("cert"), self._read("key"))
                self.refreshes += 1
                self.last_error = None
                _log("reloaded certificate from disk")
            except Exception as e:  # noqa: BLE001 - keep the current certificate whatever went wrong
                self.last_error = str(e)
                _log(f"new certificate files rejected, keeping the current one: {e}")

    def _renew(self, install: Install) -> None:
        from .ca import refresh_delay

        not_after = self._not_after
        now = self._clock()
        delay = refresh_delay(now, not_after, now=now)
        attempt = 0
        expired_reported_at: Optional[datetime] = None
        failed_since_report = 0
        while not self._wait(delay):
            try:
                chain, key, new_not_after = self._request()
                install(chain, key)
                self._current = (chain, key)
            except Exception as e:  # noqa: BLE001 - keep retrying, with backoff, even once expired
                self.last_error = str(e)
                now = self._clock()
                remaining = (not_after - now).total_seconds()
                delay = retry_delay(
                    next_backoff(attempt, self._backoff, self._uniform), remaining, self._backoff.floor
                )
                attempt += 1
                if remaining > 0:
                    _log(
                        f"renewal failed ({e}); retrying in {delay:.1f}s; "
                        f"the current certificate is valid for {remaining:.0f}s more"
                    )
                    continue
                # Expired: every handshake with a peer now fails. Say so loudly, but once an
                # interval rather than at every retry, so the cause stays readable in the log.
                failed_since_report += 1
                since = "it expired" if expired_reported_at is None else "the last report"
                if (
                    expired_reported_at is None
                    or (now - expired_reported_at).total_seconds() >= self._backoff.expired_log_interval
                ):
                    _log(
                        f"ERROR: certificate EXPIRED at {not_after:%Y-%m-%d %H:%M:%S} UTC "
                        f"({max(-remaining, 0):.0f}s ago), mTLS to peers will fail; "
                        f"{failed_since_report} renewal attempt(s) failed since {since}, "
                        f"the last with: {e}; next attempt in {delay:.1f}s"
                    )
                    expired_reported_at, failed_since_report = now, 0
                continue
            if expired_reported_at is not None:
                _log("renewed the expired certificate; mTLS to peers works again")
            self.refreshes += 1
            self.last_error = None
            attempt, expired_reported_at, failed_since_report = 0, None, 0
            not_after = new_not_after
            now = self._clock()
            delay = refresh_delay(now, not_after, now=now)


def _anchor_certs(pem: str) -> list[Any]:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return []


def warn_expiring_anchors(pem: str, now: datetime) -> list[str]:
    """Logs a warning for each anchor in `pem` that expires within 30 days (or has expired);
    returns the warnings."""
    from cryptography.hazmat.primitives import hashes

    warnings = []
    for cert in _anchor_certs(pem):
        left = cert.not_valid_after_utc - now
        if left >= ANCHOR_WARNING:
            continue
        when = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        state = f"expires in {left.days} days, at {when}" if left > timedelta(0) else f"EXPIRED at {when}"
        warnings.append(
            f"WARNING: trust anchor {cert.subject.rfc4514_string()} (sha256 "
            f"{cert.fingerprint(hashes.SHA256()).hex()[:16]}...) {state}: rotate it with "
            "`meshcore identity rotate-anchor`"
        )
    for warning in warnings:
        _log(warning)
    return warnings
