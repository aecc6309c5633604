"""`meshcore.control.v1.Fleet`: what proxies report, what operators read, and rollouts.

- `Report` (unary): a proxy's id and version, the config it runs, and its golden metrics since
  its previous report; answered `{}`. A proxy id is bound to the identity it first came with (the
  mTLS SPIFFE ID, or none on plain loopback): another identity using it is PERMISSION_DENIED.
- `Status` (unary, request `{}`): the fleet table, the config versions held, the rollout under way.
- `Rollout` (server-streaming): starts a rollout (meshcore.control.rollout) and streams its progress;
  one at a time. It goes on, and undoes itself if it must, when the caller goes away.

Configs reach a proxy as a `config` resource on its Discovery stream (see protocol.ConfigWire):
the control plane keeps the one each proxy should run, and a proxy that reconnects gets it again
unless it holds that resource version already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import grpc

from .fleet import ConfigVersion, Fleet, IdentityMismatch
from .protocol import (
    CONFIG_RESOURCE,
    FLEET_SERVICE,
    REPORT,
    ROLLOUT,
    STATUS,
    ConfigWire,
    ProxyInfo,
    RequestError,
    decode,
    encode,
    parse_report,
)
from .rollout import Rollout, parse_rollout, resolve_config

__all__ = ["ConfigPush", "FleetService"]

log = logging.getLogger("meshcore.control")


@dataclass(frozen=True)
class ConfigPush:
    """A config resource for one proxy (offered to its stream as a service state is)."""

    proxy_id: str
    version: int
    config_version: Optional[int]
    config: Optional[ConfigVersion]
    rollback_to: Optional[int]
    name: str = CONFIG_RESOURCE

    def to_wire(self) -> ConfigWire:
        return {
            "type": "config",
            "name": CONFIG_RESOURCE,
            "version": self.version,
            "exists": True,
            "config_version": self.config_version,
            "format": self.config.format if self.config else None,
            "text": self.config.text if self.config else None,
            "rollback_to": self.rollback_to,
        }


class FleetService:
    def __init__(
        self,
        offer: Callable[[ConfigPush], None],
        identity_of: Callable[[grpc.aio.ServicerContext], Optional[str]],
    ) -> None:
        self.fleet = Fleet()
        self._offer = offer  # hands a push to the proxy's open stream, if any
        self._identity_of = identity_of
        self._desired: dict[str, ConfigPush] = {}
        # Push versions from the clock: a proxy that moves to another replica never holds one of
        # its numbers for a config it did not get.
        self._pushes = int(time.time() * 1000)
        self._report_seen: Optional[asyncio.Event] = None
        self.rollout: Optional[Rollout] = None
        self._task: Optional[asyncio.Task[bool]] = None

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(handler: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=decode, response_serializer=encode
            )

        rollout = grpc.unary_stream_rpc_method_handler(
            self._rollout, request_deserializer=decode, response_serializer=encode
        )
        return grpc.method_handlers_generic_handler(
            FLEET_SERVICE, {REPORT: unary(self._report), STATUS: unary(self._status), ROLLOUT: rollout}
        )

    # -- the Discovery stream's side

    def subscribed(self, proxy: ProxyInfo, identity: Optional[str]) -> None:
        """Raises IdentityMismatch for a proxy id that another identity holds."""
        self.fleet.subscribed(proxy, identity)

    def unsubscribed(self, proxy_id: str) -> None:
        self.fleet.unsubscribed(proxy_id)

    def desired(self, proxy_id: str) -> Optional[ConfigPush]:
        return self._desired.get(proxy_id)

    def push(
        self,
        proxy_id: str,
        config_version: Optional[int],
        config: Optional[ConfigVersion],
        rollback_to: Optional[int],
    ) -> int:
        """Sets the config `proxy_id` should run and offers it to its stream; returns the
        resource version, which the proxy's reports echo once it has acted on it."""
        self._pushes += 1
        push = ConfigPush(proxy_id, self._pushes, config_version, config, rollback_to)
        self._desired[proxy_id] = push
        self._offer(push)
        return push.version

    # -- reports

    async def reported(self) -> None:
        """Returns at the next report from any proxy."""
        if self._report_seen is None:
            self._report_seen = asyncio.Event()
        await self._report_seen.wait()

    async def _report(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            report = parse_report(message)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad report: {e}")
        try:
            self.fleet.report(report, self._identity_of(context))
        except IdentityMismatch as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        if self._report_seen is not None:
            self._report_seen.set()
            self._report_seen = None
        return {}

    async def _status(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        rollout = self.rollout
        return {
            "proxies": self.fleet.status(),
            "configs": [c.summary() for c in self.fleet.configs()],
            "rollout": None
            if rollout is None
            else {
                "config_version": rollout.config.version,
                "state": rollout.state,
                "moved": list(rollout.moved),
            },
        }

    # -- rollouts

    async def _rollout(self, message: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if self._task is not None and not self._task.done():
            assert self.rollout is not None
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"a rollout of config v{self.rollout.config.version} is under way ({self.rollout.state})",
            )
        try:
            plan = parse_rollout(message)
            config = resolve_config(plan, self.fleet)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad rollout: {e}")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        rollout = Rollout(plan, config, self.fleet, self.push, self.reported, events.put_nowait)
        self.rollout = rollout
        origin = f"from {config.source}" if plan.text is not None else "held"
        rollout.say("config", f"config v{config.version} ({origin}, {len(config.text.encode())} bytes)")
        self._task = asyncio.create_task(rollout.run())
        while True:
            event = await events.get()
            yield event
            if event["kind"] in ("done", "failed"):
                return
