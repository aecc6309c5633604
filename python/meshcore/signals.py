"""Serving until told to stop: the signals `meshcore run` and `meshcore demo` share."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable, Optional, Protocol

__all__ = ["handle_signals", "serve_until_stopped"]


class Stoppable(Protocol):
    def wait(self, timeout: Optional[float] = None) -> bool: ...


def handle_signals(on_hangup: Optional[Callable[[], None]] = None) -> threading.Event:
    """SIGINT and SIGTERM set the returned event (stop, then drain). SIGHUP, which by default
    kills the process at once with no drain, runs `on_hangup` (`meshcore run` reloads its
    config) on a thread of its own, never inside the handler: a reload takes locks and time.
    Without `on_hangup` it is ignored with a log line."""
    stop = threading.Event()

    def on_stop(_signum: int, _frame: object) -> None:
        stop.set()

    def hangup(_signum: int, _frame: object) -> None:
        if on_hangup is None:
            print("meshcore: SIGHUP ignored: nothing to reload here", file=sys.stderr, flush=True)
            return
        threading.Thread(target=on_hangup, name="meshcore-sighup", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, hangup)
    return stop


def serve_until_stopped(
    proxy: Stoppable, duration: Optional[float] = None, stop: Optional[threading.Event] = None
) -> None:
    """Serves until SIGINT/SIGTERM, an admin /shutdown, or `duration` seconds."""
    if stop is None:
        stop = handle_signals()

    # A helper thread passes on a stop from elsewhere (the admin API), so this
    # thread can wait long: on POSIX a signal interrupts the wait at once, and
    # elsewhere the 5 s only bounds how late Ctrl-C is seen. (It woke five
    # times a second before, which costs CPU on every idle node.)
    def pass_on_stop() -> None:
        proxy.wait()
        stop.set()

    threading.Thread(target=pass_on_stop, name="meshcore-stop", daemon=True).start()
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        stop.wait(5.0 if left is None else min(left, 5.0))
