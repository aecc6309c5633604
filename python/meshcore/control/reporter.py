"""`Reporter`: sends a proxy's report to the control plane's `Fleet/Report` every `interval`, and
at once when `poke()`d (a config applied). Its own asyncio loop in a daemon thread and its own gRPC
channel (the subscription's stream is server-streaming: nothing goes up on it). A report that
cannot be sent is dropped, not queued: the next one carries the responses since the last one that
got through, so nothing is counted twice or lost."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import grpc

from ..errors import TlsError
from .client import CHANNEL_OPTIONS, PathLike
from .protocol import REPORT_PATH, decode, encode

__all__ = ["Reporter"]

log = logging.getLogger("meshcore.control.client")

REPORT_TIMEOUT = 10.0


class Reporter:
    """`collect()` returns the report to send; `sent()` is called once the control plane took it
    (so that the next report counts from there)."""

    def __init__(
        self,
        url: str,
        collect: Callable[[], dict[str, Any]],
        sent: Callable[[dict[str, Any]], None],
        interval: float,
        tls: Optional[tuple[PathLike, PathLike, PathLike]] = None,
    ) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        self._target = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
        self._secure = parts.scheme == "https"
        self._tls = tls
        self.url = url
        self._collect, self._sent = collect, sent
        self.interval = interval
        self.reports = 0
        self.last_error: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._started = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> Reporter:
        self._thread = threading.Thread(target=self._main, name="meshcore-control-reporter", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def poke(self) -> None:
        """Report now (from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = asyncio.current_task()  # type: ignore[assignment]
            self._started.set()
            await self._run()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass

    def _channel(self) -> grpc.aio.Channel:
        if not self._secure:
            return grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
        assert self._tls is not None
        cert, key, anchors = (_read(p) for p in self._tls)  # read each time: renewed certificates
        credentials = grpc.ssl_channel_credentials(anchors, private_key=key, certificate_chain=cert)
        return grpc.aio.secure_channel(self._target, credentials, options=CHANNEL_OPTIONS)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                async with self._channel() as channel:
                    report = channel.unary_unary(
                        REPORT_PATH, request_serializer=encode, response_deserializer=decode
                    )
                    while True:
                        message = self._collect()
                        await report(message, timeout=REPORT_TIMEOUT)
                        self._sent(message)
                        self.reports += 1
                        if self.last_error is not None:
                            log.warning("control plane %s: reports go through again", self.url)
                            self.last_error = None
                        await self._pause()
            except grpc.aio.AioRpcError as e:
                error = f"{e.code().name}: {e.details()}"
            except (OSError, TlsError) as e:
                error = str(e)
            if error != self.last_error:  # once per kind of failure, not every interval
                log.warning(
                    "control plane %s: report not sent: %s; retrying every %gs",
                    self.url,
                    error,
                    self.interval,
                )
            self.last_error = error
            await self._pause()

    async def _pause(self) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), self.interval)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()


def _read(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsError(f"{path}: cannot read: {e.strerror or e}") from None
