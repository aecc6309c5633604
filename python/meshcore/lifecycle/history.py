"""Config history: every applied config as a numbered version, kept in `state_dir`.

    <state_dir>/history.json          the index: one entry per version, oldest first
    <state_dir>/configs/<N>.<format>  the text that was applied, as given (toml, yaml or json)

Each write goes to a temporary file that is fsynced and renamed over the old one, so a crash
leaves the previous index or the new one, never half of either. The config text is written
before the index names it. The newest LIMIT versions are kept (100: enough to roll back past any
bad afternoon, small enough to read at a glance); older ones and their texts are removed.
Numbering never restarts, also across restarts and after pruning.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import MeshcoreError

__all__ = ["History", "Version", "LIMIT", "SOURCES"]

LIMIT = 100
INDEX = "history.json"
INDEX_FORMAT = 1
SOURCES = ("start", "file", "signal", "watch", "api", "rollback", "control")


@dataclass
class Version:
    version: int
    hash: str
    applied_at: float
    source: str
    who: str
    format: str
    bad: Optional[str] = None
    rollback_of: Optional[int] = None
    text: str = field(default="", repr=False)

    def summary(self) -> dict[str, Any]:
        """What the index and GET /config/history show (no text)."""
        out = asdict(self)
        del out["text"]
        return out


class History:
    """The versions of one proxy's config. `state_dir` None keeps them in memory only (a config
    given as a dict). Thread-safe; the Lifecycle serializes changes anyway."""

    def __init__(self, state_dir: Optional[Path], limit: int = LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.state_dir = state_dir
        self.limit = limit
        self._lock = threading.Lock()
        self._versions: list[Version] = []
        self._next = 1
        if state_dir is not None:
            self._open(state_dir)

    # -- reading

    def versions(self) -> list[Version]:
        with self._lock:
            return list(self._versions)

    def newest(self) -> Optional[Version]:
        with self._lock:
            return self._versions[-1] if self._versions else None

    def get(self, version: int) -> Optional[Version]:
        """The version with its text, or None if it never was or has been pruned."""
        with self._lock:
            for v in self._versions:
                if v.version == version:
                    return self._with_text(v)
        return None

    def rollback_target(self, before: int) -> Optional[Version]:
        """The newest version older than `before` that is not marked bad and whose config differs
        from version `before`'s (rolling back to the same config would change nothing), with
        its text."""
        with self._lock:
            current = next((v for v in self._versions if v.version == before), None)
            for v in reversed(self._versions):
                if v.version < before and v.bad is None and (current is None or v.hash != current.hash):
                    return self._with_text(v)
        return None

    def _with_text(self, v: Version) -> Version:
        if self.state_dir is None:
            return v
        # A copy: the texts stay on disk, not in every running proxy's memory.
        return replace(v, text=self._config_path(v).read_text(encoding="utf-8"))

    # -- changing

    def record(
        self,
        *,
        text: str,
        fmt: str,
        hash: str,
        source: str,
        who: str,
        rollback_of: Optional[int] = None,
        applied_at: Optional[float] = None,
    ) -> Version:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (valid: {', '.join(SOURCES)})")
        with self._lock:
            v = Version(
                version=self._next,
                hash=hash,
                applied_at=time.time() if applied_at is None else applied_at,
                source=source,
                who=who,
                format=fmt,
                rollback_of=rollback_of,
                text=text,
            )
            if self.state_dir is not None:
                _write_atomically(self._config_path(v), text.encode("utf-8"))
                # Read back by get(): a mesh's config is megabytes, and 100 versions are kept.
                v = replace(v, text="")
            kept = self._versions + [v]
            pruned, kept = kept[: -self.limit], kept[-self.limit :]
            self._commit(kept, self._next + 1)
            for old in pruned:
                if self.state_dir is not None:
                    self._config_path(old).unlink(missing_ok=True)
            return v

    def mark_bad(self, version: int, reason: str) -> None:
        with self._lock:
            for v in self._versions:
                if v.version == version:
                    v.bad = reason
                    self._commit(self._versions, self._next)
                    return
        raise KeyError(version)

    # -- storage

    def _config_path(self, v: Version) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "configs" / f"{v.version}.{v.format}"

    def _commit(self, versions: list[Version], next_version: int) -> None:
        """Writes the index (when persisted), then takes it as the state in memory."""
        if self.state_dir is not None:
            index = {
                "format": INDEX_FORMAT,
                "next": next_version,
                "versions": [v.summary() for v in versions],
            }
            _write_atomically(self.state_dir / INDEX, (json.dumps(index, indent=2) + "\n").encode())
        self._versions, self._next = versions, next_version

    def _open(self, state_dir: Path) -> None:
        try:
            (state_dir / "configs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MeshcoreError(f"state_dir: cannot create {state_dir}: {e.strerror or e}") from None
        path = state_dir / INDEX
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            versions = [Version(**entry) for entry in index["versions"]]
            next_version = max([int(index["next"]), *(v.version + 1 for v in versions)])
        except FileNotFoundError:
            versions, next_version = [], 1
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Kept aside, not lost; numbering goes on past every stored config.
            aside = path.with_name(f"{INDEX}.unreadable-{int(time.time())}")
            os.replace(path, aside)
            print(
                f"meshcore: {path}: unreadable history index ({e}); "
                f"moved to {aside.name}, starting a new one",
                file=sys.stderr,
                flush=True,
            )
            numbers = [
                int(p.name.split(".")[0]) for p in (state_dir / "configs").iterdir() if p.name[0].isdigit()
            ]
            versions, next_version = [], max(numbers, default=0) + 1
        self._versions, self._next = versions, next_version


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsynced, renamed over `path`, and the directory fsynced,
    so the rename itself survives a crash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
