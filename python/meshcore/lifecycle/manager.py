"""Lifecycle: the one place a config change is applied to a running proxy.

Every trigger (SIGHUP, `meshcore reload`, PUT /config, the file watcher, a rollback, a failed
verification) comes here. A change is validated in full, as `meshcore check` does, then applied
with `Proxy.reload` and recorded as a new version in the History; a refused change leaves the
proxy as it was and says why (log line, /config/status, config_reload_total{result="refused"}).
One lock serializes changes, so versions are numbered in the order they were applied.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..config import Config, format_of, loads
from ..proxy import check
from .diff import canonical_json
from .history import History, Version
from .state import state_dir_of

if TYPE_CHECKING:
    from ..proxy import Proxy

__all__ = ["Lifecycle", "Outcome", "config_hash", "state_dir_of"]


@dataclass
class Outcome:
    """What a reload or rollback did. `result`: "applied", "refused" (error says why),
    "unchanged" (the config is the running one) or "nothing" (no version to roll back to)."""

    applied: bool
    version: Optional[int]
    error: Optional[str]
    result: str = ""

    def __post_init__(self) -> None:
        if not self.result:
            self.result = "applied" if self.applied else "refused" if self.error else "unchanged"


def config_hash(config: Config) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(config.model_dump(mode="json")).encode()).hexdigest()


def _listener_certificates(config: Config) -> dict[str, tuple[str, str]]:
    """Each edge listener's certificate and key PEMs, by listener name."""
    return {
        lst.name: config.server_certificate_pems(lst.certificate)
        for lst in config.listeners
        if lst.certificate
    }


def _log(message: str) -> None:
    print(f"meshcore: {message}", file=sys.stderr, flush=True)


def _describe(e: Exception) -> str:
    """As `meshcore check` prints it (after its "meshcore: " prefix)."""
    return f"{type(e).__name__}: {e}"


class Lifecycle:
    def __init__(
        self,
        proxy: Proxy,
        source_path: Optional[Path],
        history: History,
        verifier_factory: Optional[Callable[..., Any]] = None,
    ) -> None:
        self.proxy = proxy
        self.source_path = source_path
        self._history = history
        self._verifier_factory = verifier_factory
        self._verifier: Any = None
        self._verify_policy: Any = None
        self._watcher: Any = None
        self._lock = threading.RLock()
        self._current: Optional[Version] = None
        self._last: Optional[dict[str, Any]] = None
        self._counts = {"applied": 0, "refused": 0, "unchanged": 0}
        self._closed = False
        # The edge listeners' certificate PEMs being served: a reload of the same config serves
        # renewed files when these changed.
        self._certificates: dict[str, tuple[str, str]] = {}

    @classmethod
    def for_proxy(cls, proxy: Proxy, source_path: Optional[Path]) -> Lifecycle:
        """A Lifecycle with its History in the running config's state_dir."""
        return cls(proxy, source_path, History(state_dir_of(proxy.settings)), _verifier_factory())

    # -- the running version

    def start(self) -> None:
        """Records the running config as a version unless it is the newest one already, and
        starts verification and watching as the config asks."""
        with self._lock:
            config = self.proxy.config  # built again from the proxy's compact copy
            running_hash = config_hash(config)
            try:
                self._certificates = _listener_certificates(config)
            except OSError:
                self._certificates = {}  # gone since the start: the next reload says so
            newest = self._history.newest()
            if newest is not None and newest.hash == running_hash:
                self._current = newest
                del config
            else:
                text, fmt = self._running_text(config, running_hash)
                # Gone before what stays is made: what stays among its garbage pins memory.
                del config
                self._current = self._history.record(
                    text=text, fmt=fmt, hash=running_hash, source="start", who="start"
                )
            self._sync(self.proxy.settings)

    def _running_text(self, config: Config, running_hash: str) -> tuple[str, str]:
        """The file's text if it still holds the running config, else the running config as JSON."""
        if self.source_path is not None:
            try:
                text, fmt = self.source_path.read_text(encoding="utf-8"), format_of(self.source_path)
                if config_hash(loads(text, fmt, name=str(self.source_path))) == running_hash:
                    return text, fmt
            except Exception:  # noqa: BLE001 - changed or gone since start: keep what runs
                pass
        return json.dumps(config.model_dump(mode="json"), indent=2) + "\n", "json"

    # -- changes

    def reload(
        self, *, source: str, who: str, text: Optional[str] = None, fmt: Optional[str] = None
    ) -> Outcome:
        """Applies new config text, or the config file's text when `text` is None."""
        with self._lock:
            if text is None:
                if self.source_path is None:
                    return self._refused(source, who, "ConfigError: no config file to re-read")
                name = str(self.source_path)
                try:
                    text = self.source_path.read_text(encoding="utf-8")
                except (OSError, UnicodeError) as e:
                    return self._refused(source, who, f"ConfigError: {name}: cannot read file: {e}")
                fmt = format_of(self.source_path)
            else:
                name = "PUT /config"
            return self._apply(text, fmt or "toml", name=name, source=source, who=who)

    def rollback(self, version: Optional[int], *, who: str, reason: str = "manual") -> Outcome:
        """Applies an earlier version's text as a new version (source "rollback"). None: the newest
        earlier version that is not marked bad and differs from the running config."""
        with self._lock:
            current = self._current.version if self._current else 0
            if version is None:
                target = self._history.rollback_target(current)
                if target is None:
                    return Outcome(
                        False, current, "nothing to roll back to: no earlier good version", "nothing"
                    )
            else:
                target = self._history.get(version)
                if target is None:
                    return Outcome(False, current, f"no version {version} in the history", "nothing")
            outcome = self._apply(
                target.text,
                target.format,
                name=f"version {target.version}",
                source="rollback",
                who=who,
                rollback_of=target.version,
            )
            if outcome.applied:
                self._count("rollback", reason)
            return outcome

    def _apply(
        self, text: str, fmt: str, *, name: str, source: str, who: str, rollback_of: Optional[int] = None
    ) -> Outcome:
        try:
            return self._apply_text(text, fmt, name=name, source=source, who=who, rollback_of=rollback_of)
        finally:
            # Once all is done: the pages that the validated models (30 MB for 10,000 services),
            # check's core and the old table took go back to the system.
            self.proxy.trim_memory()

    def _apply_text(
        self, text: str, fmt: str, *, name: str, source: str, who: str, rollback_of: Optional[int]
    ) -> Outcome:
        # The validated config is gone before what stays is made: what stays among its garbage
        # would keep that memory (the proxy keeps its own compact copy).
        refused, new_hash, unchanged = self._validate_and_swap(text, fmt, name)
        if refused is not None:
            return self._refused(source, who, refused)
        if unchanged:
            assert self._current is not None
            return self._finish(Outcome(False, self._current.version, None), source, who)
        self._current = self._history.record(
            text=text, fmt=fmt, hash=new_hash, source=source, who=who, rollback_of=rollback_of
        )
        self._sync(self.proxy.settings)
        if self._verifier is not None:
            if source == "rollback":
                self._verifier.cancel()  # back to a known config: nothing to judge
            else:
                self._verifier.begin(self._current.version)
        of = f", rollback of v{rollback_of}" if rollback_of is not None else ""
        _log(f"config v{self._current.version} applied ({source}, {who}{of})")
        return self._finish(Outcome(True, self._current.version, None), source, who)

    def _validate_and_swap(self, text: str, fmt: str, name: str) -> tuple[Optional[str], str, bool]:
        """Validates and checks `text` and reloads the proxy with it unless it is the running
        config: (why it was refused or None, its hash, whether it is the running config)."""
        base_dir = self.source_path.parent if self.source_path is not None else None
        try:
            config = loads(text, fmt, name=name, base_dir=base_dir)
            new_hash = config_hash(config)
            unchanged = self._current is not None and new_hash == self._current.hash
            check(config)  # if unchanged, the files it names may have changed: still say if they are bad
            certificates = _listener_certificates(config)
            if not unchanged:
                self.proxy.reload(config)
            elif certificates != self._certificates:
                # The same config with renewed certificate files (an ACME client's): the listeners
                # whose files changed serve the new ones from their next handshake.
                self.proxy.reload(config)
                _log(f"listener certificates renewed: {', '.join(sorted(certificates))}")
            self._certificates = certificates
        except Exception as e:  # noqa: BLE001 - plugin code may raise anything; the old config stays
            return _describe(e), "", False
        return None, new_hash, unchanged

    def _refused(self, source: str, who: str, error: str) -> Outcome:
        _log(f"config refused ({source}, {who}): {error}")
        current = self._current.version if self._current else None
        return self._finish(Outcome(False, current, error), source, who)

    def _finish(self, outcome: Outcome, source: str, who: str) -> Outcome:
        self._counts[outcome.result] += 1
        self._count("reload", outcome.result)
        self._last = {
            "result": outcome.result,
            "version": outcome.version,
            "error": outcome.error,
            "source": source,
            "who": who,
            "at": time.time(),
        }
        return outcome

    def _count(self, event: str, label: str) -> None:
        if self.proxy.running:
            self.proxy.count_lifecycle(event, label)

    # -- verification and watching follow the running config

    def _sync(self, config: Config) -> None:
        if self._closed:
            return
        self._sync_verifier(config.reload)
        self._sync_watcher(config.watch)

    def _sync_verifier(self, policy: Any) -> None:
        if policy == self._verify_policy:
            return
        if self._verifier is not None:
            self._verifier.stop()
            self._verifier = None
        self._verify_policy = policy
        if policy is None:
            return
        if self._verifier_factory is None:  # a Lifecycle built without verification
            return
        self._verifier = self._verifier_factory(self.proxy.route_stats, policy, self._on_bad)
        self._verifier.start()

    def _on_bad(self, version: int, label: str, message: str) -> None:
        # On a thread of its own: the verifier's sampler calls this, and a rollback may stop
        # that very verifier (a rolled-back policy), which joins the sampler.
        threading.Thread(
            target=self._roll_back_bad, args=(version, label, message), name="meshcore-rollback", daemon=True
        ).start()

    def _roll_back_bad(self, version: int, label: str, message: str) -> None:
        with self._lock:
            try:
                self._history.mark_bad(version, label)
            except KeyError:
                pass
            if self._current is None or self._current.version != version:
                _log(f"config v{version} failed verification ({message}); a newer version runs already")
                return
            _log(f"config v{version} failed verification: {message}; rolling back")
            outcome = self.rollback(None, who="verify", reason=label)
            if not outcome.applied:
                _log(f"config v{version}: automatic rollback failed: {outcome.error}")

    def _sync_watcher(self, watch: bool) -> None:
        if watch and self._watcher is None and self.source_path is not None:
            from .watch import ConfigWatcher

            self._watcher = ConfigWatcher(self.watched_paths, self._on_watched_change)
            self._watcher.start()
        elif not watch and self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def watched_paths(self) -> list[Path]:
        """The config file and every file the running config names."""
        config = self.proxy.settings
        paths = [self.source_path] if self.source_path is not None else []
        names: list[Optional[str]] = [config.admin_token_file]
        if config.identity is not None:
            identity = config.identity
            names += [identity.trust_anchors, identity.cert, identity.key, identity.token_file]
        names += [p.path for p in config.plugins]
        names += [
            n
            for lst in config.listeners
            if lst.certificate
            for n in (lst.certificate.cert, lst.certificate.key)
        ]
        paths += [config.resolve_path(n) for n in names if n]
        return paths

    def _on_watched_change(self) -> None:
        self.reload(source="watch", who="watch")

    # -- reading

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = self._current
            return {
                "version": current.version if current else None,
                "hash": current.hash if current else None,
                "applied_at": current.applied_at if current else None,
                "source": current.source if current else None,
                "who": current.who if current else None,
                "file": self._file_status(current),
                "state_dir": str(self._history.state_dir) if self._history.state_dir else None,
                "watch": self._watcher is not None,
                "last_reload": self._last,
                "reloads": dict(self._counts),
                "verify": self._verifier.status() if self._verifier is not None else None,
            }

    def _file_status(self, current: Optional[Version]) -> Optional[dict[str, Any]]:
        """Whether the config file holds the running config (after a PUT or a rollback it may not)."""
        if self.source_path is None:
            return None
        out: dict[str, Any] = {"path": str(self.source_path), "hash": None, "matches": False, "error": None}
        try:
            text = self.source_path.read_text(encoding="utf-8")
            out["hash"] = config_hash(loads(text, format_of(self.source_path), name=str(self.source_path)))
            out["matches"] = current is not None and out["hash"] == current.hash
        except Exception as e:  # noqa: BLE001 - shown, not raised
            out["error"] = _describe(e)
        return out

    def history(self) -> list[dict[str, Any]]:
        """Newest first; the running one marked."""
        current = self._current.version if self._current else None
        return [{**v.summary(), "current": v.version == current} for v in reversed(self._history.versions())]

    def version(self, number: int) -> Optional[dict[str, Any]]:
        """One version with its stored text and its validated config (for diffs); None if unknown."""
        v = self._history.get(number)
        if v is None:
            return None
        try:
            config: Any = loads(v.text, v.format, name=f"version {number}").model_dump(mode="json")
        except Exception:  # noqa: BLE001 - a version this meshcore no longer reads: text only
            config = None
        current = self._current.version if self._current else None
        return {**v.summary(), "current": v.version == current, "text": v.text, "config": config}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watcher, self._watcher = self._watcher, None
            verifier, self._verifier = self._verifier, None
        # Outside the lock: either thread may be waiting for it to apply a change.
        if watcher is not None:
            watcher.stop()
        if verifier is not None:
            verifier.stop()


def _verifier_factory() -> Callable[..., Any]:
    from .verify import Verifier

    return Verifier
