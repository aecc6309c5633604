"""The control plane's state: services and their endpoints, each with a version.

A resource's version grows by one on every change of that resource; the store's revision grows by
one on every change of anything. A source's report that changes nothing changes no version.

Several sources may feed one store, in the order they were fed (`feed`). A service's endpoints
come from the first source, in that order, that reports it (a local directory before DNS); another
such source's report of it is set aside (logged once) and served only when the first drops it.
Sources that add endpoints (links to other clusters: `Source.adds_endpoints`) never compete: what
they report is added after the owner's endpoints, so a zonal balancer keeps traffic on the local
ones and uses the other cluster's as the costliest tier; a service only they report is theirs.

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
        self._adds: set[str] = set()  # sources whose endpoints are added to the owner's
        self._conflicts: set[tuple[str, str]] = set()  # (service, ignored source), logged once

    @property
    def revision(self) -> int:
        return self._revision

    def apply(self, changes: Changes, source: str = "source") -> list[ServiceState]:
        """Applies `source`'s report; returns (and tells the watchers) what really changed."""
        with self._lock:
            reported = self._reported.setdefault(source, {})  # first report = fed, if not fed
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
        """The service's new state after a report touched it, None if it did not change."""
        reporting = [s for s, names in self._reported.items() if name in names]
        owners = [s for s in reporting if s not in self._adds]
        for source in owners[1:]:
            if (name, source) not in self._conflicts:
                self._conflicts.add((name, source))
                log.error("service %r from %s set aside: %s serves it", name, source, owners[0])
        old = self._services.get(name)
        if not reporting:
            if old is None or not old.exists:
                return None
            return ServiceState(name, old.version + 1, False)
        now: list[EndpointWire] = []
        seen: set[str] = set()
        for source in owners[:1] + [s for s in reporting if s in self._adds]:
            for e in self._reported[source][name]:
                if e["addr"] not in seen:  # one address, one endpoint: the first source's
                    seen.add(e["addr"])
                    now.append(e)
        endpoints = tuple(now)
        if old is not None and old.exists and old.endpoints == endpoints:
            return None
        return ServiceState(name, (old.version if old else 0) + 1, True, endpoints)

    def feed(self, source: str, adds: bool = False) -> Callable[[Changes], list[ServiceState]]:
        """The `on_change` to start the source named `source` with; call it in the sources'
        order of precedence. `adds`: its endpoints are added to the owner's (a link)."""
        with self._lock:
            self._reported.setdefault(source, {})
            if adds:
                self._adds.add(source)
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
