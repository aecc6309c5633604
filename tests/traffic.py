"""Background traffic for tests that wait on what requests cause (a tap line, a tripped
endpoint, a row in `top`): requests go round-robin over the URLs until the test has seen its
event and stops them, bounded by a count and a deadline so a broken test cannot loop for ever."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Optional

import httpx


class Traffic:
    def __init__(
        self,
        urls: list[str],
        *,
        headers: Optional[dict[str, str]] = None,
        max_requests: int = 100_000,
        max_seconds: float = 60.0,
    ) -> None:
        self.urls = urls
        self.headers = headers or {}
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10.0) as client:
            for i in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    r = client.get(self.urls[i % len(self.urls)], headers=self.headers)
                    self.statuses[r.status_code] += 1
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
