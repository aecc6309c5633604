"""`Subscription`: what a proxy runs to follow the control plane.

It runs its own asyncio loop in a daemon thread, so a synchronous caller (the proxy) only calls
`start()`, `wait_synced()`, `state()` and `stop()`, and gets `on_update(changed)` from that thread
with only the resources whose content changed. When the control plane goes away it keeps its
last-known state, reconnects with exponential backoff and full jitter (0.1 s doubling to 10 s: a
delay drawn between 0 and that), and resumes with the versions it holds, so the snapshot that
follows leaves out what it already has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import grpc

from .. import __version__
from ..errors import ConfigError, TlsError
from .protocol import SUBSCRIBE_PATH, ProxyInfo, ResourceWire, SubscribeRequest, decode, encode
from .server import is_loopback

__all__ = ["Subscription", "backoff_delay"]

log = logging.getLogger("meshcore.control.client")

BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Notice a control plane that vanished without closing (a cut cable, a frozen host).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),  # a full snapshot of a large mesh
    ("grpc.enable_retries", 0),  # this class retries, with its own backoff
]

OnUpdate = Callable[[list[ResourceWire]], None]
PathLike = Union[str, "os.PathLike[str]"]
# (certificate chain, key, trust anchors): PEM files, or a callable giving the PEMs (an identity
# held in memory, as one from the identity service).
TlsFiles = tuple[PathLike, PathLike, PathLike]
TlsPems = Callable[[], tuple[bytes, bytes, bytes]]


def backoff_delay(attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: a delay between 0 and 0.1 s x 2^attempt, capped at 10 s."""
    return rng(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


class Subscription:
    """Follows `services` (names, or ["*"]) at `url` (https://HOST:PORT, or http:// on loopback)."""

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        services: Iterable[str],
        on_update: OnUpdate,
        *,
        tls: Union[TlsFiles, TlsPems, None] = None,
        proxy_info: Union[ProxyInfo, dict[str, Any], None] = None,
        server_name: Optional[str] = None,
        server_identity: Optional[str] = None,
    ):
        """`url` may be several replicas' URLs: when a stream breaks, the next is tried (with the
        same backoff), resuming with the versions held. `tls` is (certificate chain, key, trust
        anchors) as PEM files, or a callable returning those PEMs; either is read at each connect,
        so a renewed certificate is used. `server_name` is the name to check the control plane's
        certificate against when it is not the URL's host; `server_identity` the SPIFFE ID it must
        have (see server_identity.py)."""
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ConfigError("a subscription needs the URL of a control plane")
        self._targets = [self._check_url(u, tls, server_identity) for u in urls]
        self.urls = urls
        self._current = 0
        self._server_identity = server_identity
        self._tls = tls
        self._server_name = server_name
        self.services = sorted(set(services))
        if not self.services:
            raise ConfigError('a subscription needs service names, or ["*"] for all')
        self._on_update = on_update
        if isinstance(proxy_info, dict):
            proxy_info = ProxyInfo(**proxy_info)
        self.proxy_info = proxy_info or ProxyInfo(f"{socket.gethostname()}-{os.getpid()}", __version__)
        self._lock = threading.Lock()
        self._state: dict[str, ResourceWire] = {}
        self._epoch: Optional[str] = None
        self._synced = threading.Event()
        self.connects = 0  # streams opened (each one's snapshot received)
        self.last_error: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        """The control plane followed now (or tried next)."""
        return self.urls[self._current]

    @property
    def _target(self) -> str:
        return self._targets[self._current][0]

    @property
    def _secure(self) -> bool:
        return self._targets[self._current][1]

    @property
    def _host(self) -> str:
        return self._targets[self._current][2]

    @property
    def _port(self) -> int:
        return self._targets[self._current][3]

    @staticmethod
    def _check_url(url: str, tls: object, server_identity: Optional[str]) -> tuple[str, bool, str, int]:
        """(gRPC target, secure, host, port) for `url`; ConfigError naming it if it is not one to
        follow."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ConfigError(f"control plane URL {url!r}: expected https://HOST:PORT (http:// on loopback)")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ConfigError(
                f"control plane URL {url!r}: plain http:// is accepted for loopback hosts only; use https://"
            )
        if parts.scheme == "https" and tls is None:
            raise ConfigError(f"control plane URL {url!r}: https needs tls=(cert, key, trust anchors)")
        if server_identity is not None and parts.scheme != "https":
            raise ConfigError(f"control plane URL {url!r}: checking its identity needs https://")
        host = parts.hostname
        target = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
        return target, parts.scheme == "https", host, parts.port

    def start(self) -> Subscription:
        self._thread = threading.Thread(target=self._thread_main, name="meshcore-control-client", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """True once the first snapshot has been received and applied."""
        return self._synced.wait(timeout)

    def state(self) -> dict[str, ResourceWire]:
        """The last known resources by name, "does not exist" ones included."""
        with self._lock:
            return dict(self._state)

    def _thread_main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            await self._follow()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass

    async def _channel(self) -> grpc.aio.Channel:
        if not self._secure:
            return grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
        cert, key, anchors = self._pems()
        roots = anchors
        if self._server_identity is not None:
            from .server_identity import checked_server_leaf  # cryptography, only when asked

            # The checked leaf becomes gRPC's only root: it connects to that certificate alone.
            roots = await asyncio.to_thread(
                checked_server_leaf,
                self._host,
                self._port,
                self._server_identity,
                chain_pem=cert,
                key_pem=key,
                anchors_pem=anchors,
                server_name=self._server_name,
            )
        options = list(CHANNEL_OPTIONS)
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        credentials = grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=cert)
        return grpc.aio.secure_channel(self._target, credentials, options=options)

    async def open_channel(self) -> grpc.aio.Channel:
        """A channel to the control plane followed now, with this subscription's credentials and
        checks, on the caller's event loop (the proxy's reports go on one of their own)."""
        return await self._channel()

    def _pems(self) -> tuple[bytes, bytes, bytes]:
        assert self._tls is not None
        if callable(self._tls):
            try:
                return self._tls()
            except Exception as e:  # noqa: BLE001 - the identity's holder failed: retried like a connect
                raise TlsError(f"no client certificate for the control plane: {e}") from None
        cert, key, anchors = (self._read(p) for p in self._tls)
        return cert, key, anchors

    @staticmethod
    def _read(path: PathLike) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise TlsError(f"{path}: cannot read: {e.strerror or e}") from None

    def _request(self) -> dict[str, Any]:
        with self._lock:
            versions = {name: r["version"] for name, r in self._state.items()}
            epoch = self._epoch
        return SubscribeRequest(self.proxy_info, frozenset(self.services), versions, epoch).to_wire()

    async def _follow(self) -> None:
        attempt = 0
        while True:
            try:
                async with await self._channel() as channel:
                    subscribe = channel.unary_stream(
                        SUBSCRIBE_PATH, request_serializer=encode, response_deserializer=decode
                    )
                    async for message in subscribe(self._request()):
                        attempt = 0
                        self._apply(message)
                self.last_error = "the control plane ended the stream"
            except grpc.aio.AioRpcError as e:
                self.last_error = f"{e.code().name}: {e.details()}"
            except (OSError, ConfigError, TlsError) as e:  # a certificate file unreadable now
                self.last_error = str(e)
            delay = backoff_delay(attempt)
            attempt += 1
            failed = self.url
            self._current = (self._current + 1) % len(self.urls)
            log.warning(
                "control plane %s: %s; keeping the last known state, reconnecting%s in %.2fs",
                failed,
                self.last_error,
                f" to {self.url}" if self.url != failed else "",
                delay,
            )
            await asyncio.sleep(delay)

    def _apply(self, message: Any) -> None:
        kind = message.get("kind")
        changed: list[ResourceWire] = []
        with self._lock:
            if kind == "snapshot":
                self._epoch = message.get("epoch")
                self.connects += 1
            for resource in message.get("resources", ()):
                old = self._state.get(resource["name"])
                self._state[resource["name"]] = resource
                if old is None or _content(old) != _content(resource):
                    changed.append(resource)
        if changed:
            try:
                self._on_update(changed)
            except Exception:  # noqa: BLE001 - the caller's bug must not end the subscription
                log.exception("on_update raised; the subscription goes on")
        if kind == "snapshot":
            self._synced.set()


def _content(resource: ResourceWire) -> dict[str, Any]:
    """All but the version: a resource re-sent unchanged is no update."""
    return {k: v for k, v in resource.items() if k != "version"}
