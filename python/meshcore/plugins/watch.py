"""Reloads file plugins when their source changes on disk.

Polling once a second keeps this portable and free of dependencies; a reload is rare and
a second's delay is fine for an edit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .loader import LoadedPlugin, source_path

__all__ = ["SourceWatcher"]


class SourceWatcher:
    """A daemon thread that calls `on_change` when a loaded file plugin's mtime moves."""

    def __init__(
        self,
        plugins: Callable[[], list[LoadedPlugin]],
        base_dir: Optional[Path],
        on_change: Callable[[], None],
    ):
        self._plugins = plugins  # asked each time: reloads replace the list
        self._base_dir = base_dir
        self._on_change = on_change
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="meshcore-plugin-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _changed(self) -> bool:
        for p in self._plugins():
            path = source_path(p.spec, self._base_dir)
            if path is not None and path.exists() and path.stat().st_mtime_ns != p.mtime:
                return True
        return False

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self._changed():
                time.sleep(0.1)  # let the writer finish
                self._on_change()
