"""The control plane's state: services and their endpoints, each with a version.

A resource's version grows by one on every change of that resource; the store's revision grows by
one on every change of anything. A source's report that changes nothing changes no version. A
removed service stays as a tombstone (`exists: false`, its version moved on), so a proxy resuming
with the old version learns it is gone. `epoch` names this store instance: versions count from
its start, so versions seen from another instance (before a restart) mean nothing here.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Callable

from .protocol import EndpointWire, ResourceWire
from .sources import Changes

__all__ = ["ServiceState", "Store"]


@dataclass(frozen=True)
class ServiceState:
    name: str
    version: int
    exists: bool
    endpoints: tuple[EndpointWire, ...] = ()

    def to_wire(self) -> ResourceWire:
        return {
            "type": "service",
            "name": self.name,
            "version": self.version,
            "exists": self.exists,
            "endpoints": list(self.endpoints),
        }


# Called with the new revision and the states that changed, from the thread that applied them.
Watcher = Callable[[int, list[ServiceState]], None]


class Store:
    def __init__(self) -> None:
        self.epoch = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._revision = 0
        self._services: dict[str, ServiceState] = {}
        self._watchers: list[Watcher] = []

    @property
    def revision(self) -> int:
        return self._revision

    def apply(self, changes: Changes) -> list[ServiceState]:
        """Applies a source's report; returns (and tells the watchers) what really changed."""
        with self._lock:
            changed: dict[str, ServiceState] = {}
            for name, endpoints in changes.services.items():
                old = self._services.get(name)
                now = tuple(endpoints)
                if old is not None and old.exists and old.endpoints == now:
                    continue
                changed[name] = ServiceState(name, (old.version if old else 0) + 1, True, now)
            for name in changes.removed:
                old = self._services.get(name)
                if old is None or not old.exists or name in changed:
                    continue
                changed[name] = ServiceState(name, old.version + 1, False)
            if not changed:
                return []
            self._revision += 1
            self._services.update(changed)
            revision, watchers = self._revision, list(self._watchers)
        states = list(changed.values())
        for watcher in watchers:
            watcher(revision, states)
        return states

    def get(self, name: str) -> ServiceState:
        """The service's state; one never heard of is version 0, not existing."""
        with self._lock:
            return self._services.get(name) or ServiceState(name, 0, False)

    def all(self) -> list[ServiceState]:
        """Every service, tombstones included."""
        with self._lock:
            return list(self._services.values())

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Calls `watcher` after each change; returns the function that stops it."""
        with self._lock:
            self._watchers.append(watcher)

        def unwatch() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return unwatch
