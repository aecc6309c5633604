"""Single key presses from a terminal, for live views (`meshcore top`): cbreak mode while open (no
echo, no waiting for Enter; Ctrl-C still interrupts), the terminal's own settings back when closed,
whatever ended it."""

from __future__ import annotations

import os
import select
import termios
import time
import tty
from typing import IO, Any, Optional

__all__ = ["Keys"]


class Keys:
    """Without a terminal on `stream` (a pipe, /dev/null), `read` waits out its timeout and no
    setting is touched."""

    def __init__(self, stream: IO[Any]) -> None:
        self._fd: Optional[int] = stream.fileno() if stream.isatty() else None
        self._saved: Optional[list[Any]] = None

    @property
    def interactive(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Keys:
        if self._fd is not None:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def read(self, timeout: float) -> str:
        """The keys pressed within `timeout` seconds ("" if none): returns at the first press.
        Escape sequences (arrows, function keys) are left out, so their letters are not keys."""
        timeout = max(0.0, timeout)
        if self._fd is None:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self._fd, 64)
        if not data:  # the terminal hung up: no more keys (nor settings to restore)
            self._fd = self._saved = None
            return ""
        text = data.decode("utf-8", "replace")
        return "" if "\x1b" in text else text
