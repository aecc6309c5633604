"""The control plane's state: services and their endpoints, each with a version.

A resource's version grows by one on every change of that resource; the store's revision grows by
one on every change of anything. A source's report that changes nothing changes no version.

Several sources may feed one store: a service belongs to the source that reported it first, and
another source's report of it is ignored (logged once) until the owner removes it, when the other
takes over; two sources never take turns overwriting one service.

A removed service stays as a tombstone (`exists: false`, its version moved on), so a proxy resuming
with the old version learns it is gone. `epoch` names this store instance: versions count from
its start, so versions seen from another instance (before a restart) mean nothing here.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .protocol import EndpointWire, ResourceWire
from .sources import Changes

__all__ = ["ServiceState", "Store"]

log = logging.getLogger("meshcore.control")


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
        # What each source last reported, in the order sources first reported (a dict keeps it).
        self._reported: dict[str, dict[str, tuple[EndpointWire, ...]]] = {}
        self._owners: dict[str, str] = {}  # service -> the source whose report is served
        self._conflicts: set[tuple[str, str]] = set()  # (service, ignored source), logged once

    @property
    def revision(self) -> int:
        return self._revision

    def apply(self, changes: Changes, source: str = "source") -> list[ServiceState]:
        """Applies `source`'s report; returns (and tells the watchers) what really changed."""
        with self._lock:
            reported = self._reported.setdefault(source, {})
            touched: list[str] = []
            for name, endpoints in changes.services.items():
                reported[name] = tuple(endpoints)
                touched.append(name)
            for name in changes.removed:
                self._conflicts.discard((name, source))
                if reported.pop(name, None) is not None:
                    touched.append(name)
            changed: dict[str, ServiceState] = {}
            for name in touched:
                state = self._settle(name)
                if state is not None:
                    changed[name] = state
            if not changed:
                return []
            self._revision += 1
            self._services.update(changed)
            revision, watchers = self._revision, list(self._watchers)
        states = list(changed.values())
        for watcher in watchers:
            watcher(revision, states)
        return states

    def _settle(self, name: str) -> Optional[ServiceState]:
        """The service's new state after a report touched it, None if it did not change. Its
        owner keeps it while it reports it; when the owner drops it, the next source that
        reported it (in order of first report) takes it over."""
        owner = self._owners.get(name)
        if owner is None or name not in self._reported.get(owner, {}):
            owner = next((s for s, names in self._reported.items() if name in names), None)
            if owner is None:
                self._owners.pop(name, None)
            else:
                self._owners[name] = owner
        for source, names in self._reported.items():
            if source != owner and name in names and (name, source) not in self._conflicts:
                self._conflicts.add((name, source))
                log.error("service %r from %s ignored: %s already serves it", name, source, owner)
        old = self._services.get(name)
        if owner is None:
            if old is None or not old.exists:
                return None
            return ServiceState(name, old.version + 1, False)
        now = self._reported[owner][name]
        if old is not None and old.exists and old.endpoints == now:
            return None
        return ServiceState(name, (old.version if old else 0) + 1, True, now)

    def feed(self, source: str) -> Callable[[Changes], list[ServiceState]]:
        """The `on_change` to start the source named `source` with."""
        return lambda changes: self.apply(changes, source)

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
