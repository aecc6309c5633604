"""Samples of a running proxy's `/stats`, from its admin API, turned into golden numbers per
route and per service over the time between two samples."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from .golden import Row, check_stats, golden_rows

__all__ = ["AdminUnavailable", "Sampler", "fetch_stats"]


class AdminUnavailable(Exception):
    """The admin API did not answer with a proxy's stats; the message says where and why."""


def fetch_stats(url: str, token: Optional[str], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"accept": "application/json"})
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as e:
        try:
            reason = e.read().decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException):  # the answer broke off: its status says enough
            reason = ""
        said = f": {reason}" if reason else ""
        raise AdminUnavailable(f"{url}: {e.code} {e.reason}{said}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        why = getattr(e, "reason", None) or e
        raise AdminUnavailable(f"cannot reach the admin API at {url}: {why}") from None
    try:
        return check_stats(json.loads(body))
    except ValueError as e:
        raise AdminUnavailable(f"{url} did not answer with a proxy's stats: {e}") from None


class Sampler:
    """Each `sample()` gives the rows for the time since the one before."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        self.url, self.token, self.timeout = url, token, timeout
        self._then: Optional[dict[str, Any]] = None
        self._at = 0.0

    def sample(self) -> dict[str, list[Row]]:
        """Raises AdminUnavailable; the sample after that is a new start (no rates)."""
        try:
            stats = fetch_stats(self.url, self.token, self.timeout)
        except AdminUnavailable:
            self._then = None
            raise
        at = time.monotonic()
        rows = golden_rows(stats, self._then, at - self._at)
        self._then, self._at = stats, at
        return rows

    @property
    def seconds(self) -> float:
        """Since the last sample."""
        return time.monotonic() - self._at
