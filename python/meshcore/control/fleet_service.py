"""`meshcore.control.v1.Fleet`: what proxies report, what operators read, and rollouts.

- `Report` (unary): a proxy's id and version, the config it runs, and its golden metrics since
  its previous report; answered `{}`. A proxy id is bound to the identity it first came with (the
  mTLS SPIFFE ID, or none on plain loopback): another identity using it is PERMISSION_DENIED.
- `Status` (unary, request `{}`): the fleet table, the config versions held, the rollout under way.
- `Rollout` (server-streaming): starts a rollout (meshcore.control.rollout) and streams its progress;
  one at a time. It goes on, and undoes itself if it must, when the caller goes away.

Configs reach a proxy as a `config` resource on its Discovery stream (see protocol.ConfigWire),
and the meshcore it should run as an `upgrade` resource (protocol.UpgradeWire): the control plane
keeps the ones each proxy should run, and a proxy that reconnects gets them again unless it holds
those resource versions already (a new process that took over gets the upgrade it runs already,
and says "unchanged").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import grpc

from .fleet import ConfigVersion, Fleet, IdentityMismatch
from .protocol import (
    CONFIG_RESOURCE,
    FLEET_SERVICE,
    REPORT,
    ROLLOUT,
    STATUS,
    UPGRADE_RESOURCE,
    ConfigWire,
    ProxyInfo,
    RequestError,
    UpgradeWire,
    decode,
    encode,
    parse_report,
)
from .rollout import Rollout, parse_rollout, resolve_change

__all__ = ["ConfigPush", "FleetService", "UpgradePush"]

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


@dataclass(frozen=True)
class UpgradePush:
    """An upgrade resource for one proxy: the meshcore `command` it should run."""

    proxy_id: str
    version: int
    command: tuple[str, ...]
    name: str = UPGRADE_RESOURCE

    def to_wire(self) -> UpgradeWire:
        return {
            "type": "upgrade",
            "name": UPGRADE_RESOURCE,
            "version": self.version,
            "exists": True,
            "command": list(self.command),
            "request": self.version,
        }


Push = Union[ConfigPush, UpgradePush]


class FleetService:
    def __init__(
        self,
        offer: Callable[[Push], None],
        identity_of: Callable[[grpc.aio.ServicerContext], Optional[str]],
    ) -> None:
        self.fleet = Fleet()
        self._offer = offer  # hands a push to the proxy's open stream, if any
        self._identity_of = identity_of
        self._desired: dict[tuple[str, str], Push] = {}  # (proxy id, resource name) -> push
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

    def desired(self, proxy_id: str) -> list[Push]:
        return [push for (proxy, _), push in self._desired.items() if proxy == proxy_id]

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
        return self._set(ConfigPush(proxy_id, self._pushes, config_version, config, rollback_to))

    def push_upgrade(self, proxy_id: str, command: tuple[str, ...]) -> int:
        """Sets the meshcore `proxy_id` should run and offers it to its stream (the streams of
        both processes, while one replaces the other); returns the resource version."""
        self._pushes += 1
        return self._set(UpgradePush(proxy_id, self._pushes, command))

    def _set(self, push: Push) -> int:
        self._desired[(push.proxy_id, push.name)] = push
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
                "target": rollout.change.target,
                "config_version": rollout.change.config_version,
                "meshcore": rollout.change.command,
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
                f"a rollout of {self.rollout.change.target} is under way ({self.rollout.state})",
            )
        try:
            plan = parse_rollout(message)
            change = resolve_change(plan, self.fleet, self.push, self.push_upgrade)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad rollout: {e}")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        rollout = Rollout(plan, change, self.fleet, self.reported, events.put_nowait)
        self.rollout = rollout
        rollout.say(change.kind, change.introduce())
        self._task = asyncio.create_task(rollout.run())
        while True:
            event = await events.get()
            yield event
            if event["kind"] in ("done", "failed"):
                return
