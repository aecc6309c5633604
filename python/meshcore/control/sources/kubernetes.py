"""Kubernetes: Services and EndpointSlices (discovery.k8s.io/v1), listed then watched.

- Names: the Service `web` in namespace `shop` is the meshcore service `web.shop` (all namespaces,
  or one with `namespace=`).
- A Service exists as long as the API server has it; with no EndpointSlices it exists with no
  endpoints. Slices are joined to their Service by the `kubernetes.io/service-name` label, and
  several slices of one Service are merged.
- Endpoints: each slice endpoint's addresses, on one port of the slice: the port the Service's
  `meshcore.io/port` annotation names (a port name, or a number to match the slice's port number),
  else the slice's first port. A slice without that port adds nothing (logged once).
  Zone from `endpoints[].zone`, cluster from `cluster=` (`--cluster`), a protocol hint from the
  port's appProtocol (http -> http1; h2c, grpc -> http2).
- Readiness: an endpoint whose `conditions.ready` is false is left out (unset means ready, as
  the API documents). A terminating endpoint is left out even while it still serves: the pod is
  going away, and new requests sent there race its shutdown; the proxy lets the ones in flight finish.
- List then watch with resourceVersion and bookmarks; an expired version (410 Gone) lists again
  and reports the difference. A broken watch reconnects with backoff and jitter, resuming from
  the last version seen; meanwhile the last known state stays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ...errors import ConfigError
from ...kube.api import KubeApi
from ...kube.watch import ApiFailure, Gone, list_all, watch
from ..protocol import EndpointWire
from . import Changes, OnChange, Source, endpoint

__all__ = ["PORT_ANNOTATION", "KubernetesSource", "service_name"]

log = logging.getLogger("meshcore.control")

PORT_ANNOTATION = "meshcore.io/port"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
APP_PROTOCOLS = {"http": "http1", "kubernetes.io/h2c": "http2", "h2c": "http2", "grpc": "http2"}

Key = tuple[str, str]  # namespace, name


def service_name(key: Key) -> str:
    """(namespace, name) -> the meshcore name, NAME.NAMESPACE."""
    return f"{key[1]}.{key[0]}"


@dataclass(frozen=True)
class Kind:
    plural: str
    api: str  # the group/version path
    singular: str

    def path(self, namespace: Optional[str]) -> str:
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{self.api}{where}/{self.plural}"


SERVICES = Kind("services", "/api/v1", "Service")
SLICES = Kind("endpointslices", "/apis/discovery.k8s.io/v1", "EndpointSlice")


@dataclass(frozen=True)
class ServiceInfo:
    port: Optional[str]  # what its meshcore.io/port annotation names


@dataclass(frozen=True)
class Port:
    name: Optional[str]
    number: int
    protocol: Optional[str]


@dataclass(frozen=True)
class Slice:
    service: Optional[Key]
    ports: tuple[Port, ...]
    endpoints: tuple[tuple[str, Optional[str]], ...]  # (address, zone) of the usable endpoints

    def port(self, wanted: Optional[str]) -> Optional[Port]:
        if wanted is None:
            return self.ports[0] if self.ports else None
        return next((p for p in self.ports if p.name == wanted or str(p.number) == wanted), None)


def _host_port(address: str, port: int) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass  # an FQDN slice
    return f"{address}:{port}"


def _digest(kind: Kind, raw: dict[str, Any]) -> tuple[Key, Any]:
    """(namespace, name) and what counts of the object (ServiceInfo or Slice), read through
    lightkube's typed models; ValueError naming the object and field when it is malformed."""
    import msgspec
    from lightkube.resources.core_v1 import Service
    from lightkube.resources.discovery_v1 import EndpointSlice

    model = Service if kind is SERVICES else EndpointSlice
    try:
        obj: Any = model.from_dict(raw)
    except (msgspec.ValidationError, TypeError) as e:
        meta = _metadata(raw)
        raise ValueError(f"{kind.singular} {meta.get('namespace')}/{meta.get('name')}: {e}") from None
    if obj.metadata is None or not obj.metadata.name or not obj.metadata.namespace:
        raise ValueError(f"{kind.singular} without metadata.name and metadata.namespace")
    key = (obj.metadata.namespace, obj.metadata.name)
    if kind is SERVICES:
        return key, ServiceInfo((obj.metadata.annotations or {}).get(PORT_ANNOTATION))
    return key, _digest_slice(obj)


def _digest_slice(obj: Any) -> Slice:
    labels = obj.metadata.labels or {}
    owner = labels.get(SERVICE_NAME_LABEL)
    ports = tuple(
        Port(p.name or None, p.port, APP_PROTOCOLS.get(p.appProtocol or ""))
        for p in obj.ports or ()
        if p.port is not None
    )
    usable: list[tuple[str, Optional[str]]] = []
    for e in obj.endpoints or ():
        conditions = e.conditions
        if conditions is not None and (conditions.ready is False or conditions.terminating is True):
            continue
        usable.extend((address, e.zone) for address in e.addresses)
    return Slice((obj.metadata.namespace, owner) if owner else None, ports, tuple(usable))


def backoff_delay(attempt: int, cap: float, base: float = 0.1) -> float:
    """Full jitter: between 0 and base x 2^attempt, capped."""
    return random.uniform(0.0, min(cap, base * 2**attempt))


class KubernetesSource(Source):
    """Services and endpoints from the API server that `kubeconfig` names ("in-cluster": the pod's
    service account). See the module docstring for what is read and how."""

    name = "kubernetes"

    def __init__(
        self,
        kubeconfig: str | Path,
        *,
        namespace: Optional[str] = None,
        cluster: Optional[str] = None,
        backoff_cap: float = 10.0,
        watch_timeout: int = 300,
        start_timeout: float = 30.0,
    ):
        self.api = KubeApi(kubeconfig)  # a bad kubeconfig is a ConfigError now, before anything starts
        self.namespace = namespace
        self.cluster = cluster
        self._backoff_cap = backoff_cap
        self._watch_timeout = watch_timeout
        self._start_timeout = start_timeout
        self._on_change: Optional[OnChange] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: Any = None
        # State, touched only on the loop's thread.
        self._versions: dict[Kind, Optional[str]] = {SERVICES: None, SLICES: None}
        self._services: dict[Key, ServiceInfo] = {}
        self._slices: dict[Key, Slice] = {}
        self._slices_of: dict[Key, set[Key]] = {}  # Service -> its slices
        self._served: dict[str, list[EndpointWire]] = {}
        self._port_warned: set[tuple[Key, Optional[str]]] = set()

    def describe(self) -> str:
        where = f" namespace {self.namespace}" if self.namespace else ""
        return f"kubernetes {self.api.server}{where}"

    # -- lifecycle (any thread) --

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="meshcore-control-kube", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._first_list(), loop)
        try:
            future.result(self._start_timeout)
        except Exception as e:  # noqa: BLE001 - whatever stopped the first list is the user's answer
            future.cancel()
            self.stop()
            if isinstance(e, concurrent.futures.TimeoutError):
                e = TimeoutError(f"no answer in {self._start_timeout:g} s")
            raise ConfigError(
                f"--kubernetes {self.api.source}: cannot list Services and EndpointSlices "
                f"from {self.api.server}: {e}"
            ) from None
        asyncio.run_coroutine_threadsafe(self._start_watches(), loop).result()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join()
        loop.close()

    # -- on the loop --

    async def _first_list(self) -> None:
        self._http = self.api.async_client(read_timeout=self._watch_timeout + 30)
        touched: set[Key] = set()
        for kind in (SERVICES, SLICES):
            touched |= await self._relist(kind)
        self._publish(touched)
        log.info(
            "kubernetes: %d services from %s at resourceVersions %s/%s",
            len(self._services),
            self.api.server,
            self._versions[SERVICES],
            self._versions[SLICES],
        )

    async def _start_watches(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._follow(k)) for k in (SERVICES, SLICES)]

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _follow(self, kind: Kind) -> None:
        """Watches `kind` for as long as the source runs: resumes from the last version after a
        break, lists again when that version has expired."""
        import httpx2

        path = kind.path(self.namespace)
        failures = 0

        def opened() -> None:
            nonlocal failures
            if failures:
                log.info(
                    "kubernetes: watching %s again from resourceVersion %s", kind.plural, self._versions[kind]
                )
            failures = 0

        while True:
            try:
                if self._versions[kind] is None:
                    touched = await self._relist(kind)
                    changed = self._publish(touched)
                    log.info(
                        "kubernetes: %s listed again at resourceVersion %s: %d services changed",
                        kind.plural,
                        self._versions[kind],
                        changed,
                    )
                version = self._versions[kind]
                assert version is not None
                async for event, obj in watch(self._http, path, version, self._watch_timeout, opened):
                    self._event(kind, event, obj)
                failures = 0  # the server ended the watch at its timeoutSeconds: watch on from here
            except Gone as e:
                log.info("kubernetes: %s; listing %s again", e, kind.plural)
                self._versions[kind] = None
                if failures:  # gone again straight after a list: do not spin
                    await asyncio.sleep(backoff_delay(failures, self._backoff_cap))
                failures += 1
            except (ApiFailure, httpx2.HTTPError, OSError) as e:
                delay = backoff_delay(failures, self._backoff_cap)
                failures += 1
                if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th... failure in a row
                    log.warning(
                        "kubernetes: %s: %s (failure %d in a row); last known state kept; retrying",
                        kind.plural,
                        str(e) or type(e).__name__,
                        failures,
                    )
                await asyncio.sleep(delay)

    async def _relist(self, kind: Kind) -> set[Key]:
        """Lists `kind` whole and puts it in place of what was known; answers the Services touched."""
        listed = await list_all(self._http, kind.path(self.namespace))
        fresh: dict[Key, Any] = {}
        for raw in listed.items:
            try:
                key, value = _digest(kind, raw)
            except ValueError as e:
                log.error("kubernetes: refused %s (its previous state stays)", e)
                key = _raw_key(raw)
                old = (self._services if kind is SERVICES else self._slices).get(key)
                if old is not None:
                    fresh[key] = old
                continue
            fresh[key] = value
        touched: set[Key] = set()
        known = self._services if kind is SERVICES else self._slices
        for key in set(known) - set(fresh):
            touched |= self._forget(kind, key)
        for key, value in fresh.items():
            touched |= self._remember(kind, key, value)
        self._versions[kind] = listed.resource_version
        return touched

    def _event(self, kind: Kind, event: str, raw: dict[str, Any]) -> None:
        version = (raw.get("metadata") or {}).get("resourceVersion")
        touched: set[Key] = set()
        if event in ("ADDED", "MODIFIED", "DELETED"):
            try:
                key, value = _digest(kind, raw)
            except ValueError as e:
                log.error("kubernetes: refused %s %s (its previous state stays)", event, e)
            else:
                touched = self._forget(kind, key) if event == "DELETED" else self._remember(kind, key, value)
        elif event != "BOOKMARK":
            log.warning("kubernetes: %s watch: unknown event type %r ignored", kind.plural, event)
        if version:
            self._versions[kind] = str(version)
        self._publish(touched)

    def _remember(self, kind: Kind, key: Key, value: Any) -> set[Key]:
        if kind is SERVICES:
            self._services[key] = value
            return {key}
        touched = self._forget(SLICES, key)
        self._slices[key] = value
        if value.service is not None:
            self._slices_of.setdefault(value.service, set()).add(key)
            touched.add(value.service)
        return touched

    def _forget(self, kind: Kind, key: Key) -> set[Key]:
        if kind is SERVICES:
            return {key} if self._services.pop(key, None) is not None else set()
        old = self._slices.pop(key, None)
        if old is None or old.service is None:
            return set()
        self._slices_of.get(old.service, set()).discard(key)
        return {old.service}

    def _endpoints(self, key: Key) -> list[EndpointWire]:
        wanted = self._services[key].port
        found: dict[str, EndpointWire] = {}
        for slice_key in sorted(self._slices_of.get(key, ())):
            piece = self._slices[slice_key]
            port = piece.port(wanted)
            if port is None:
                if piece.endpoints and (slice_key, wanted) not in self._port_warned:
                    self._port_warned.add((slice_key, wanted))
                    what = f"port {wanted!r} ({PORT_ANNOTATION})" if wanted else "a port"
                    log.error(
                        "kubernetes: EndpointSlice %s/%s has no %s; its endpoints are left out of %s",
                        *slice_key,
                        what,
                        service_name(key),
                    )
                continue
            for address, zone in piece.endpoints:
                addr = _host_port(address, port.number)
                found.setdefault(  # an address in two slices (while it moves) counts once
                    addr, endpoint(addr, zone=zone, cluster=self.cluster, protocol=port.protocol)
                )
        return [found[a] for a in sorted(found)]

    def _publish(self, touched: Iterable[Key]) -> int:
        """Reports what changed among the `touched` Services; answers how many did."""
        services: dict[str, list[EndpointWire]] = {}
        removed: list[str] = []
        for key in touched:
            name = service_name(key)
            if key in self._services:
                now = self._endpoints(key)
                if self._served.get(name) != now:
                    services[name] = self._served[name] = now
            elif self._served.pop(name, None) is not None:
                removed.append(name)
        if (services or removed) and self._on_change is not None:
            self._on_change(Changes(services=services, removed=removed))
        return len(services) + len(removed)


def _metadata(raw: dict[str, Any]) -> dict[str, Any]:
    meta = raw.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _raw_key(raw: dict[str, Any]) -> Key:
    meta = _metadata(raw)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
