"""The embedded default source: a directory of TOML/YAML documents, watched for changes.

Polling the files once a second (as the plugin watcher does) keeps this portable and free of
dependencies; what proxies get is pushed, the poll is only how this source notices an edit.

A document that is refused (bad TOML, a bad field, a service another file defines) is logged with
file, field and reason, and its previous content stays in force; it is read again when it changes,
or when another file changes (a conflict may be gone).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from ...errors import ConfigError
from ..documents import SUFFIXES, DocumentError, read_document
from ..protocol import EndpointWire
from . import Changes, OnChange, Source

__all__ = ["DirectorySource"]

log = logging.getLogger("meshcore.control")

Signature = tuple[int, int, int]  # inode, size, mtime_ns
Services = dict[str, list[EndpointWire]]


class DirectorySource(Source):
    name = "directory"

    def __init__(self, directory: str | Path, interval: float = 1.0):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"--dir {self.directory}: not a directory")
        self._interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._on_change: Optional[OnChange] = None
        self._seen: dict[Path, Signature] = {}  # what each file looked like when last read
        self._accepted: dict[Path, Services] = {}  # each file's content in force
        self._refused: dict[Path, str] = {}  # file -> why, logged once per reason
        self._served: Services = {}

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._rescan()
        self._thread = threading.Thread(target=self._run, name="meshcore-control-dir", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        return str(self.directory)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._rescan()
            except Exception:  # noqa: BLE001 - a surprise must not end the watch
                log.exception("%s: rescan failed", self.directory)

    def _files(self) -> dict[Path, Signature]:
        found = {}
        for path in self.directory.iterdir():
            if path.suffix not in SUFFIXES or path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:  # removed between the listing and now
                continue
            found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def _rescan(self) -> None:
        files = self._files()
        changed = sorted(p for p, sig in files.items() if self._seen.get(p) != sig)
        gone = [p for p in self._seen if p not in files]
        if not changed and not gone:
            return
        for path in gone:
            del self._seen[path]
            self._refused.pop(path, None)
            if self._accepted.pop(path, None) is not None:
                log.info("%s: removed; its services are withdrawn", path)
        retry = set(changed) | set(self._refused)
        for path in changed:  # an edited file's refusal is news again, even for the same reason
            self._refused.pop(path, None)
        for path in sorted(retry):
            if path in files:
                self._seen[path] = files[path]
                self._read(path)
        self._publish()

    def _read(self, path: Path) -> None:
        try:
            services = read_document(path)
        except DocumentError as e:
            self._refuse(path, e)
            return
        for name in services:
            for other, theirs in self._accepted.items():
                if other != path and name in theirs:
                    reason = f"service {name!r} is also defined in {other}; {other} keeps it"
                    self._refuse(path, DocumentError(path, [("services", reason)]))
                    return
        self._refused.pop(path, None)
        self._accepted[path] = services

    def _refuse(self, path: Path, error: DocumentError) -> None:
        if self._refused.get(path) != str(error):  # a file retried for the same reason is not logged again
            kept = "its previous content stays in force" if path in self._accepted else "nothing of it served"
            for line in str(error).splitlines():
                log.error("refused %s (%s)", line, kept)
        self._refused[path] = str(error)

    def _publish(self) -> None:
        merged: Services = {}
        for services in self._accepted.values():
            merged.update(services)
        changes = Changes(
            services={n: e for n, e in merged.items() if self._served.get(n) != e},
            removed=[n for n in self._served if n not in merged],
        )
        self._served = merged
        if (changes.services or changes.removed) and self._on_change is not None:
            self._on_change(changes)
