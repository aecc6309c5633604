"""Giving memory back after bursts of connections.

glibc's malloc keeps what it freed in its arenas: after a burst of 8,000
connections closed, the proxy held 2.3 times its idle RSS (7.8 times before
idle connections were made cheap), and a sidecar with a memory limit must
come back near its idle footprint. `malloc_trim(0)` returns those free pages.
The proxy's core forbids unsafe code, so the call is made from here, off the
request path: every `interval` seconds, if the number of open connections has
fallen by `min_drop` or more from its peak since the last look. Elsewhere than
glibc there is no `malloc_trim` and nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Callable, Optional

__all__ = ["MemoryTrimmer"]


@functools.cache
def _find_malloc_trim() -> Optional[Callable[[int], int]]:
    # By glibc's soname: ctypes.util.find_library would fork ldconfig, and a
    # fork copies every socket of the running proxy into the child.
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """Trims the allocator once a burst of connections has gone.

    `connection_peak` returns (the most connections open at once since the
    last call, how many are open now)."""

    def __init__(
        self, connection_peak: Callable[[], tuple[int, int]], interval: float = 10.0, min_drop: int = 256
    ):
        self._peak = connection_peak
        self._interval = interval
        self._min_drop = min_drop
        self._trim = _find_malloc_trim()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.trims = 0

    def check_once(self) -> bool:
        """Trims if a burst has gone since the last look; True if it did."""
        peak, now = self._peak()
        if self._trim is None or peak - now < self._min_drop:
            return False
        self._trim(0)
        self.trims += 1
        return True

    def trim(self) -> bool:
        """Trims now: after start, the config's document and the core's build leave freed pages
        (megabytes for a mesh of thousands of services). True if there is a malloc_trim."""
        if self._trim is None:
            return False
        self._trim(0)
        return True

    def start(self) -> None:
        if self._trim is None:
            return
        self._thread = threading.Thread(target=self._run, name="meshcore-memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once()
            except Exception:  # the proxy stopped between two looks
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
