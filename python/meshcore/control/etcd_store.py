"""A store shared by several control plane replicas through etcd (`control serve --etcd`).

Every replica runs its own sources. What they report is settled per replica as in `Store` (a
service belongs to the first of this replica's sources that reports it) and written to etcd at
`/meshcore/services/NAME` as the JSON list of endpoints, by a txn that writes only a value that
differs: N replicas writing the same thing make one change. A service no source of this replica
reports any more is deleted. Between replicas the last write wins: replicas are meant to run the
same sources (or one runs them and the others only serve).

Versions come from etcd, so they mean the same on every replica and a proxy that moves to another
one resumes with them: a service's version is its key's `mod_revision`, a deleted one's the
delete's revision, the revision is etcd's and the epoch names the etcd cluster. Each replica loads
the prefix, then watches it from that revision and serves reads from what it holds (no leader
is involved in a read); on a broken watch it moves to the next endpoint and resumes from the
revision it has, or reloads the whole prefix if etcd has compacted that revision away.

etcd is reached with aetcd (asyncio gRPC) on this store's own event loop in a daemon thread;
`apply` is called from the sources' threads and waits until its writes are back through the watch,
so what a replica serves includes what its sources reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from ..errors import ConfigError, MeshcoreError
from .client import backoff_delay
from .protocol import EndpointWire
from .sources import Changes, endpoint
from .store import ServiceState, Store, Watcher

__all__ = ["EtcdStore", "PREFIX", "parse_endpoints_urls"]

log = logging.getLogger("meshcore.control.etcd")

PREFIX = "/meshcore/services/"
CALL_TIMEOUT = 5  # seconds for one etcd call: a dead member is left for the next one
CHANNEL_OPTIONS = {
    # Notice a member that vanished without closing, so the watch moves on.
    "grpc.keepalive_time_ms": 5_000,
    "grpc.keepalive_timeout_ms": 3_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
}


def parse_endpoints_urls(spec: str) -> list[tuple[str, int]]:
    """'http://h1:2379,http://h2:2379' -> [(h1, 2379), (h2, 2379)]; ConfigError naming the bad one."""
    out = []
    for url in (u.strip() for u in spec.split(",")):
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme == "https":
            raise ConfigError(
                f"--etcd {url}: https:// is not supported yet (the etcd client speaks plain gRPC)"
            )
        if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ConfigError(f"--etcd {url!r}: expected http://HOST:PORT[,http://HOST:PORT...]")
        out.append((parts.hostname, port))
    return out


def encode_endpoints(endpoints: Sequence[EndpointWire]) -> bytes:
    """Canonical JSON, so replicas writing the same endpoints write the same bytes."""
    return json.dumps(list(endpoints), sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_endpoints(value: bytes) -> tuple[EndpointWire, ...]:
    """A key's value (from a replica, or written by hand with etcdctl); ValueError says what is wrong."""
    try:
        items = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(items, list):
        raise ValueError("expected a JSON list of endpoints")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("addr"), str) or not item["addr"]:
            raise ValueError(f"[{i}]: expected an object with an addr string")
        unknown = set(item) - {"addr", "zone", "cluster", "identity", "weight", "protocol"}
        if unknown:
            raise ValueError(f"[{i}].{sorted(unknown)[0]}: unknown field")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"[{i}].weight: expected a non-negative integer")
        fields = {k: item.get(k) for k in ("zone", "cluster", "identity", "protocol")}
        for k, v in fields.items():
            if v is not None and not isinstance(v, str):
                raise ValueError(f"[{i}].{k}: expected a string or null")
        out.append(endpoint(item["addr"], weight=weight, **fields))
    return tuple(out)


class EtcdStore:
    """The `Store` interface (apply, feed, get, all, watch, epoch, revision) over etcd."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], prefix: str = PREFIX):
        try:
            import aetcd
        except ImportError:
            raise ConfigError(
                "--etcd needs the etcd client: pip install 'meshcore[etcd]' (it adds aetcd)"
            ) from None
        self._aetcd = aetcd
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.epoch = ""
        self._lock = threading.Lock()  # guards what readers see: _services, _revision, _watchers
        self._revision = 0
        self._services: dict[str, ServiceState] = {}
        self._watchers: list[Watcher] = []
        # This replica's sources settled among themselves; its changes are what is written.
        self._local = Store()
        self._apply_lock = threading.Lock()  # one report written at a time, in order
        self._endpoint = 0
        self._client: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._follow_task: Optional[asyncio.Task[None]] = None
        self._caught_up: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def current_endpoint(self) -> str:
        host, port = self.endpoints[self._endpoint]
        return f"http://{host}:{port}"

    # -- life cycle (from the caller's thread) --

    def start(self, timeout: float = 10.0) -> None:
        """Connects, loads the prefix and starts watching it; MeshcoreError if no endpoint answers
        within `timeout` seconds."""
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="meshcore-etcd", daemon=True)
        self._thread.start()
        started.wait()
        assert self._loop is not None
        loaded = asyncio.run_coroutine_threadsafe(self._load_first(timeout), self._loop)
        try:
            loaded.result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def shutdown() -> None:
            if self._follow_task is not None:
                self._follow_task.cancel()
            if self._client is not None:
                await self._close_client(self._client)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        except Exception as e:  # noqa: BLE001 - closing is best effort
            log.warning("etcd: closing: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # -- the Store interface --

    def apply(self, changes: Changes, source: str = "source") -> list[ServiceState]:
        """Writes `source`'s report to etcd; returns the states it changed there, once this
        replica's watch has seen them."""
        assert self._loop is not None, "start() the store first"
        with self._apply_lock:
            settled = self._local.apply(changes, source)
            if not settled:
                return []
            return asyncio.run_coroutine_threadsafe(self._write_all(settled), self._loop).result()

    def feed(self, source: str, adds: bool = False) -> Callable[[Changes], list[ServiceState]]:
        self._local.feed(source, adds)  # precedence between this replica's sources, as Store
        return lambda changes: self.apply(changes, source)

    def get(self, name: str) -> ServiceState:
        with self._lock:
            return self._services.get(name) or ServiceState(name, 0, False)

    def all(self) -> list[ServiceState]:
        with self._lock:
            return list(self._services.values())

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        with self._lock:
            self._watchers.append(watcher)

        def unwatch() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return unwatch

    # -- on the store's loop --

    def _key(self, name: str) -> bytes:
        return (self.prefix + name).encode("utf-8")

    async def _connected(self) -> Any:
        if self._client is None:
            host, port = self.endpoints[self._endpoint]
            self._client = self._aetcd.Client(
                host=host, port=port, timeout=CALL_TIMEOUT, options=CHANNEL_OPTIONS
            )
            await self._client.connect()
        return self._client

    async def _failed(self, client: Any, what: str, error: Exception, attempt: int) -> None:
        """Leaves the endpoint that failed for the next one (if no other caller did already)."""
        delay = backoff_delay(attempt)
        log.warning(
            "etcd %s: %s: %s; trying the next endpoint in %.2fs", self.current_endpoint, what, error, delay
        )
        if client is self._client:
            self._client = None
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            await self._close_client(client)
        await asyncio.sleep(delay)

    @staticmethod
    async def _close_client(client: Any) -> None:
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - it is being dropped for failing anyway
            pass

    async def _load_first(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        attempt = 0
        while True:
            client = None
            try:
                client = await self._connected()
                await self._load(client)
                break
            except self._aetcd.ClientError as e:
                if asyncio.get_running_loop().time() >= deadline:
                    urls = ", ".join(f"http://{h}:{p}" for h, p in self.endpoints)
                    raise MeshcoreError(
                        f"--etcd {urls}: no endpoint answered within {timeout:g}s: {e}"
                    ) from None
                await self._failed(client, "loading", e, attempt)
                attempt += 1
        self._follow_task = asyncio.get_running_loop().create_task(self._follow())

    async def _load(self, client: Any) -> None:
        """Reads the whole prefix; what differs from what this replica holds becomes a change
        (a service gone is a tombstone at the read's revision)."""
        result = await client.get_prefix(self.prefix.encode("utf-8"))
        revision = result.header.revision
        epoch = f"etcd-{result.header.cluster_id:x}"
        if self.epoch and epoch != self.epoch:
            log.error(
                "etcd %s: another cluster (%s, was %s): versions start over",
                self.current_endpoint,
                epoch,
                self.epoch,
            )
        self.epoch = epoch
        seen: dict[str, ServiceState] = {}
        for kv in result:
            state = self._state_of(kv.key, kv.value, kv.mod_revision)
            if state is not None:
                seen[state.name] = state
        changed = [s for name, s in seen.items() if self.get(name) != s]
        changed += [
            ServiceState(s.name, revision, False) for s in self.all() if s.exists and s.name not in seen
        ]
        self._publish(revision, changed)

    async def _follow(self) -> None:
        attempt = 0
        while True:
            client = None
            try:
                client = await self._connected()
                # From the revision held, inclusive: a revision whose events came only in part
                # (a broken stream) is read again, and what was seen is skipped.
                watch = await client.watch_prefix(self.prefix.encode("utf-8"), start_revision=self._revision)
                async for event in watch:
                    attempt = 0
                    self._on_event(event)
                raise self._aetcd.ClientError("the watch ended")
            except self._aetcd.RevisionCompactedError:
                log.warning("etcd: revision %d compacted away; reloading %s", self._revision, self.prefix)
                try:
                    await self._load(client)
                except self._aetcd.ClientError as e:
                    await self._failed(client, "reloading", e, attempt)
                    attempt += 1
            except self._aetcd.ClientError as e:
                await self._failed(client, "watching", e, attempt)
                attempt += 1

    def _on_event(self, event: Any) -> None:
        kv = event.kv
        revision = kv.mod_revision
        if event.kind == self._aetcd.EventKind.DELETE:
            name = kv.key.decode("utf-8", "replace")[len(self.prefix) :]
            state: Optional[ServiceState] = ServiceState(name, revision, False)
        else:
            state = self._state_of(kv.key, kv.value, revision)
        if state is None or self.get(state.name).version >= revision:
            self._advance(revision)
            return
        self._publish(revision, [state])

    def _state_of(self, key: bytes, value: bytes, revision: int) -> Optional[ServiceState]:
        name = key.decode("utf-8", "replace")[len(self.prefix) :]
        try:
            return ServiceState(name, revision, True, decode_endpoints(value))
        except ValueError as e:
            log.error("etcd key %s (revision %d) ignored: %s", key.decode("utf-8", "replace"), revision, e)
            return None

    def _publish(self, revision: int, states: list[ServiceState]) -> None:
        with self._lock:
            for state in states:
                self._services[state.name] = state
            self._revision = max(self._revision, revision)
            watchers = list(self._watchers) if states else []
        for watcher in watchers:
            watcher(revision, states)
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        with self._lock:
            self._revision = max(self._revision, revision)
        waiting = []
        for target, future in self._caught_up:
            if target <= self._revision:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._caught_up = waiting

    async def _write_all(self, settled: list[ServiceState]) -> list[ServiceState]:
        written: dict[str, int] = {}
        for state in settled:
            revision = await self._write(state)
            if revision is not None:
                written[state.name] = revision
        if written:
            target = max(written.values())
            if self._revision < target:
                future = asyncio.get_running_loop().create_future()
                self._caught_up.append((target, future))
                await future
        return [self.get(name) for name in written]

    async def _write(self, state: ServiceState) -> Optional[int]:
        """One service's new value, or its delete; the revision of the change, None if etcd had
        it already. Retried on the next endpoint until it lands: a report is never dropped."""
        key = self._key(state.name)
        attempt = 0
        while True:
            client = None
            try:
                client = await self._connected()
                tx = client.transactions
                if state.exists:
                    value = encode_endpoints(state.endpoints)
                    same, responses = await client.transaction(
                        compare=[tx.value(key) == value], success=[], failure=[tx.put(key, value)]
                    )
                    revision = None if same else responses[0].response_put.header.revision
                else:
                    there, responses = await client.transaction(
                        compare=[tx.version(key) > 0], success=[tx.delete(key)], failure=[]
                    )
                    revision = responses[0].response_delete_range.header.revision if there else None
            except self._aetcd.ClientError as e:
                await self._failed(client, f"writing {state.name}", e, attempt)
                attempt += 1
                continue
            what = "wrote" if state.exists else "deleted"
            if revision is None:
                log.info("etcd: %s already as reported; nothing written", state.name)
            else:
                log.info("etcd: %s %s at revision %d", what, state.name, revision)
            return revision
