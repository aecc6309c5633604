"""The Discovery service: one long-lived gRPC stream per proxy, a snapshot at once, then deltas.

Each stream keeps the changes it has not sent yet as name -> latest state, so a slow proxy gets
the newest state of what changed (coalesced) and holds no backlog of old messages. One watcher on
the store hands each change to the event loop, which fans it out to the streams that want it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import grpc

from ..errors import BindError, ConfigError, TlsError
from .fleet import IdentityMismatch
from .fleet_service import FleetService, Push
from .protocol import (
    FLEET_RESOURCES,
    SERVICE,
    SUBSCRIBE,
    RequestError,
    ResourceWire,
    SubscribeRequest,
    decode,
    encode,
    parse_request,
)
from .store import ServiceState, Store

__all__ = ["ControlServer", "ServerTls", "is_loopback", "split_host_port"]

log = logging.getLogger("meshcore.control")

SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server on it
    # Proxies ping every 10 s to notice a dead control plane; allow it, and ping idle ones back.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.max_send_message_length", -1),
]


def split_host_port(addr: str) -> tuple[str, int]:
    """'127.0.0.1:80', '[::1]:80', 'localhost:80' -> (host, port); ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{addr!r}: expected HOST:PORT, e.g. 127.0.0.1:8470 or [::1]:8470")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerTls:
    """The control plane's certificate and key, and the trust anchors its clients' certificates
    must chain to (mTLS: a client without one is refused in the handshake)."""

    cert: Path
    key: Path
    trust_anchors: Path

    def credentials(self) -> grpc.ServerCredentials:
        def read(what: str, path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError as e:
                raise TlsError(f"--{what} {path}: cannot read: {e.strerror or e}") from None

        cert, key = read("tls-cert", self.cert), read("tls-key", self.key)
        anchors = read("trust-anchors", self.trust_anchors)
        for what, path, data, marker in (
            ("tls-cert", self.cert, cert, b"-----BEGIN CERTIFICATE-----"),
            ("tls-key", self.key, key, b"PRIVATE KEY-----"),
            ("trust-anchors", self.trust_anchors, anchors, b"-----BEGIN CERTIFICATE-----"),
        ):
            if marker not in data:
                raise TlsError(f"--{what} {path}: no PEM {'key' if what == 'tls-key' else 'certificate'}")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=anchors, require_client_auth=True)


class CredentialsSource(Protocol):
    """What the server's TLS comes from: `ServerTls` (files) or `IssuedServerTls` (the mounted CA)."""

    def credentials(self) -> grpc.ServerCredentials: ...


class _Stream:
    def __init__(self, request: SubscribeRequest, who: str):
        self.request = request
        self.who = who
        self.pending: dict[str, Union[ServiceState, Push]] = {}
        self.wake = asyncio.Event()
        self.sent: dict[str, int] = {}  # name -> version last sent

    def offer(self, state: Union[ServiceState, Push]) -> None:
        held = self.pending.get(state.name)
        if held is None or held.version < state.version:
            self.pending[state.name] = state
            self.wake.set()

    def take(self) -> list[ResourceWire]:
        """What is pending and newer than what this stream sent; marks it sent."""
        out: list[Any] = []
        for state in self.pending.values():
            if state.version > self.sent.get(state.name, -1):
                self.sent[state.name] = state.version
                out.append(state.to_wire())
        self.pending.clear()
        self.wake.clear()
        return out


class ControlServer:
    """Serves `store` on `bind`; plain gRPC on loopback only, else mTLS with `tls`."""

    def __init__(self, store: Store, bind: str, tls: Optional[CredentialsSource] = None):
        try:
            host, _ = split_host_port(bind)
        except ValueError as e:
            raise ConfigError(f"--bind {e}") from None
        if tls is None and not is_loopback(host):
            raise ConfigError(
                f"--bind {bind}: without TLS the control plane binds loopback only (127.0.0.1, ::1, "
                "localhost); give --tls-cert, --tls-key and --trust-anchors to serve other hosts"
            )
        self.store = store
        self.bind = bind
        self.tls = tls
        self.port = 0
        self._streams: set[_Stream] = set()
        self._server: Optional[grpc.aio.Server] = None
        self._unwatch: Any = None
        self.fleet = FleetService(self._offer_config, peer_identity)

    @property
    def address(self) -> str:
        host, _ = split_host_port(self.bind)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def subscribers(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.unary_stream_rpc_method_handler(
            self._subscribe, request_deserializer=decode, response_serializer=encode
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {SUBSCRIBE: handler}), self.fleet.handlers()]
        )
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(self.bind)
            else:
                self.port = server.add_secure_port(self.bind, self.tls.credentials())
        except RuntimeError as e:
            raise BindError(f"--bind {self.bind}: cannot bind: {e}") from None
        loop = asyncio.get_running_loop()

        def fan_out(revision: int, states: list[ServiceState]) -> None:
            loop.call_soon_threadsafe(self._fan_out, revision, states)

        self._unwatch = self.store.watch(fan_out)
        await server.start()
        self._server = server

    async def stop(self, grace: Optional[float] = 1.0) -> None:
        if self._unwatch is not None:
            self._unwatch()
        if self._server is not None:
            await self._server.stop(grace)

    def _fan_out(self, revision: int, states: list[ServiceState]) -> None:
        names = ", ".join(s.name for s in states[:10]) + (", ..." if len(states) > 10 else "")
        log.info("revision %d: %d service(s) changed (%s)", revision, len(states), names)
        for stream in self._streams:
            for state in states:
                if stream.request.wants(state.name):
                    stream.offer(state)

    def _offer_config(self, push: Push) -> None:
        for stream in self._streams:
            if stream.request.proxy.id == push.proxy_id:
                stream.offer(push)

    def _snapshot(self, request: SubscribeRequest) -> list[Union[ServiceState, Push]]:
        """Every resource the proxy asked for or holds, but those whose version it already has
        from this store instance (it keeps them)."""
        resumed = request.epoch == self.store.epoch
        if request.everything:
            states = {s.name: s for s in self.store.all() if s.exists or s.name in request.versions}
        else:
            states = {name: self.store.get(name) for name in request.services}
        for name in request.versions:
            if name not in states and name not in FLEET_RESOURCES:
                states[name] = self.store.get(name)
        out: list[Union[ServiceState, Push]] = list(states.values())
        out.extend(self.fleet.desired(request.proxy.id))
        if resumed:
            return [s for s in out if request.versions.get(s.name) != s.version]
        return out

    async def _subscribe(self, message: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            request = parse_request(message)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad subscription request: {e}")
            return
        who = peer_identity(context)
        proxy = request.proxy
        try:
            self.fleet.subscribed(proxy, who)
        except IdentityMismatch as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        stream = _Stream(request, f"{proxy.id} as {who}" if who else proxy.id)
        # Taken and registered with no await between: a change after it is fanned out to it.
        snapshot = self._snapshot(request)
        self._streams.add(stream)
        for state in snapshot:
            stream.sent[state.name] = state.version
        log.info(
            "subscribed: proxy %s (version %s, zone %s, cluster %s) identity %s from %s; services %s; "
            "%d resources in the snapshot%s",
            proxy.id,
            proxy.version,
            proxy.zone,
            proxy.cluster,
            who or "none (plain loopback)",
            context.peer(),
            ",".join(sorted(request.services)),
            len(snapshot),
            " (resumed)" if request.epoch == self.store.epoch else "",
        )
        try:
            yield {
                "kind": "snapshot",
                "epoch": self.store.epoch,
                "revision": self.store.revision,
                "resources": [s.to_wire() for s in snapshot],
            }
            while True:
                await stream.wake.wait()
                resources = stream.take()
                if resources:
                    yield {"kind": "delta", "resources": resources}
        finally:
            self._streams.discard(stream)
            self.fleet.unsubscribed(proxy.id)
            log.info("unsubscribed: proxy %s", stream.who)


def peer_identity(context: grpc.aio.ServicerContext) -> Optional[str]:
    """The caller's SPIFFE ID (its certificate's URI SAN), None on a plain connection."""
    auth = context.auth_context()
    for key in ("peer_spiffe_id", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            text = str(value.decode("utf-8", "replace"))
            if text.startswith("spiffe://"):
                return text
    return None
