"""`watch = true`: reloads when the config file, or a file it names, changes on disk.

Polling once a second (as plugins/watch.py does) is portable and needs no dependency; an edit
applied a second later is fine. A file caught half-written fails validation, which is just a
refused reload: the writer's next write changes the file again and the reload is retried."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

__all__ = ["ConfigWatcher"]

Signature = Optional[tuple[int, int, int]]


def _signature(path: Path) -> Signature:
    """What changes when a file is written or replaced (a rename onto it changes the inode);
    None while it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigWatcher:
    """A daemon thread that calls `on_change` once per poll in which any of `paths()` changed.
    `paths` is asked on every poll: a reload may name other files."""

    def __init__(self, paths: Callable[[], list[Path]], on_change: Callable[[], None], interval: float = 1.0):
        self._paths = paths
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self._seen: dict[Path, Signature] = {}
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._seen = {p: _signature(p) for p in self._paths()}
        self._thread = threading.Thread(target=self._run, name="meshcore-config-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _changed(self) -> bool:
        now = {p: _signature(p) for p in self._paths()}
        # A file newly named by the running config came with a change already applied.
        changed = any(p in self._seen and self._seen[p] != sig for p, sig in now.items())
        self._seen = now
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._changed():
                    self._on_change()
            except Exception as e:  # noqa: BLE001 - the watcher must outlive one bad reload
                print(f"meshcore: config watch: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
