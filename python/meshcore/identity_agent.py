"""Keeps a running proxy's workload certificate fresh, off the request path.

Two sources, as configured in `[identity]`:
- files (`cert`, `key`): reloaded when they change on disk;
- the identity service (`issuer`, `token_file`, `name`): the key is made in
  this process, a CSR is sent, and the certificate is renewed at 70 % of its
  lifetime. A failed renewal is retried with backoff while the current
  certificate stays in use until it expires.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from .config import Config
from .errors import TlsError

__all__ = ["IdentityAgent"]

Install = Callable[[str, str], None]

_FILE_POLL_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0


def _log(message: str) -> None:
    print(f"meshcore: identity: {message}", file=sys.stderr, flush=True)


class IdentityAgent:
    def __init__(self, config: Config):
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
        self._thread: Optional[threading.Thread] = None
        self.trust_anchors_pem = self._read("trust_anchors")
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
        return chain, key

    def _request(self) -> tuple[str, str, datetime]:
        from .identity import request_certificate

        token = self._read("token").strip()
        assert self._identity.issuer and self._identity.name
        chain, key, not_after = request_certificate(
            self._identity.issuer, token, self._identity.name, self.trust_anchors_pem.encode()
        )
        return chain.decode(), key.decode(), not_after

    def start(self, install: Install) -> None:
        """Runs the refresh loop on a daemon thread; `install` hands PEMs to the data plane."""
        target = self._watch_files if self._identity.issuer is None else self._renew
        self._thread = threading.Thread(target=target, args=(install,), name="meshcore-identity", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _mtimes(self) -> tuple[float, float]:
        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime_ns
            except OSError:
                return -1

        return mtime(self._paths["cert"]), mtime(self._paths["key"])

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
        from .identity import refresh_delay

        not_before = datetime.now(timezone.utc)
        not_after = self._not_after
        delay = refresh_delay(not_before, not_after)
        backoff = 1.0
        while not self._stop.wait(delay):
            try:
                chain, key, new_not_after = self._request()
                install(chain, key)
            except Exception as e:  # noqa: BLE001 - retry with backoff until the cert expires
                self.last_error = str(e)
                remaining = (not_after - datetime.now(timezone.utc)).total_seconds()
                delay = max(0.1, min(backoff, _MAX_BACKOFF_SECONDS, max(remaining, 0.1)))
                backoff *= 2
                _log(
                    f"renewal failed ({e}); retrying in {delay:.1f}s; "
                    f"the current certificate is valid for {remaining:.0f}s more"
                )
                continue
            self.refreshes += 1
            self.last_error = None
            backoff = 1.0
            not_before, not_after = datetime.now(timezone.utc), new_not_after
            delay = refresh_delay(not_before, not_after)
