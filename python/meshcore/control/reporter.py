"""`Reporter`: sends a proxy's report to the control plane's `Fleet/Report` every `interval`, and
at once when `poke()`d (a config applied). Its own asyncio loop in a daemon thread and its own gRPC
channel (the subscription's stream is server-streaming: nothing goes up on it). A report that
cannot be sent is dropped, not queued: the next one carries the responses since the last one that
got through, so nothing is counted twice or lost."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Optional

import grpc

from ..errors import ConfigError, TlsError
from .client import Subscription
from .protocol import REPORT_PATH, decode, encode

__all__ = ["Reporter"]

log = logging.getLogger("meshcore.control.client")

REPORT_TIMEOUT = 10.0


class Reporter:
    """Reports to the control plane `subscription` follows now (the replica that pushes configs
    to this proxy), with its credentials. `collect()` returns the report to send; `sent()` is
    called once the control plane took it (so that the next report counts from there)."""

    def __init__(
        self,
        subscription: Subscription,
        collect: Callable[[], dict[str, Any]],
        sent: Callable[[dict[str, Any]], None],
        interval: float,
    ) -> None:
        self._subscription = subscription
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
            self._task = asyncio.current_task()
            self._started.set()
            await self._run()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            url = self._subscription.url
            try:
                async with await self._subscription.open_channel() as channel:
                    report = channel.unary_unary(
                        REPORT_PATH, request_serializer=encode, response_deserializer=decode
                    )
                    while True:
                        message = self._collect()
                        await report(message, timeout=REPORT_TIMEOUT)
                        self._sent(message)
                        self.reports += 1
                        if self.last_error is not None:
                            log.warning("control plane %s: reports go through again", url)
                            self.last_error = None
                        await self._pause()
                        if self._subscription.url != url:
                            break  # the subscription moved to another replica: report there
                    continue
            except grpc.aio.AioRpcError as e:
                error = f"{e.code().name}: {e.details()}"
            except (OSError, TlsError, ConfigError) as e:
                error = str(e)
            if error != self.last_error:  # once per kind of failure, not every interval
                log.warning(
                    "control plane %s: report not sent: %s; retrying every %gs",
                    url,
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
