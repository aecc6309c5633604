"""The wire format of `meshcore.control.v1.Discovery/Subscribe`: JSON messages over gRPC.

No protobuf: each message is one JSON object in UTF-8, and these (de)serializers are given to
grpc's generic handlers on both sides. `parse_request` checks a request field by field, so a bad
one is refused with a reason naming the field (gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, TypedDict

SERVICE = "meshcore.control.v1.Discovery"
SUBSCRIBE = "Subscribe"
SUBSCRIBE_PATH = f"/{SERVICE}/{SUBSCRIBE}"
ALL = "*"


class EndpointWire(TypedDict):
    addr: str
    zone: Optional[str]
    cluster: Optional[str]
    identity: Optional[str]
    weight: int
    protocol: Optional[str]


class ResourceWire(TypedDict):
    type: str  # "service"; routes and policies come later
    name: str
    version: int
    exists: bool
    endpoints: list[EndpointWire]


def encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


class RequestError(ValueError):
    """A subscription request the server refuses; the message names the field."""


@dataclass(frozen=True)
class ProxyInfo:
    """A proxy as it introduces itself. `pid`, `started_at` (wall clock) and `command` (what starts
    its meshcore: meshcore.process) are its process's; a process that replaces another under the
    same id started later, which is how the fleet tells the serving one from the draining one."""

    id: str
    version: str
    zone: Optional[str] = None
    cluster: Optional[str] = None
    pid: Optional[int] = None
    started_at: Optional[float] = None
    command: Optional[tuple[str, ...]] = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "zone": self.zone,
            "cluster": self.cluster,
            "pid": self.pid,
            "started_at": self.started_at,
            "command": None if self.command is None else list(self.command),
        }


@dataclass(frozen=True)
class SubscribeRequest:
    proxy: ProxyInfo
    services: frozenset[str]  # {"*"} for all
    versions: dict[str, int] = field(default_factory=dict)
    # The store instance the versions were seen from (an extension: versions from another
    # instance, before a restart, say nothing about this one's, so they are ignored).
    epoch: Optional[str] = None

    @property
    def everything(self) -> bool:
        return ALL in self.services

    def wants(self, name: str) -> bool:
        return self.everything or name in self.services

    def to_wire(self) -> dict[str, Any]:
        return {
            "proxy": self.proxy.to_wire(),
            "services": sorted(self.services),
            "versions": dict(self.versions),
            "epoch": self.epoch,
        }


def _string(value: Any, where: str, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise RequestError(f"{where}: expected a non-empty string{' or null' if optional else ''}")
    return value


def parse_request(message: Any) -> SubscribeRequest:
    if not isinstance(message, dict):
        raise RequestError("the request must be a JSON object")
    unknown = set(message) - {"proxy", "services", "versions", "epoch"}
    if unknown:
        raise RequestError(f"{sorted(unknown)[0]}: unknown field")
    info = _proxy_info(message.get("proxy"))
    services = message.get("services")
    if not isinstance(services, list) or not services:
        raise RequestError('services: expected a non-empty list of service names, or ["*"] for all')
    for i, name in enumerate(services):
        _string(name, f"services[{i}]")
    versions = message.get("versions", {})
    if not isinstance(versions, dict):
        raise RequestError("versions: expected an object of service name to version")
    for name, version in versions.items():
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise RequestError(f"versions.{name}: expected a non-negative integer")
    epoch = _string(message.get("epoch"), "epoch", optional=True)
    return SubscribeRequest(info, frozenset(services), dict(versions), epoch)


# -- the fleet: proxies report to the control plane; operators read the fleet and roll out configs

FLEET_SERVICE = "meshcore.control.v1.Fleet"
REPORT, STATUS, ROLLOUT = "Report", "Status", "Rollout"
REPORT_PATH = f"/{FLEET_SERVICE}/{REPORT}"
STATUS_PATH = f"/{FLEET_SERVICE}/{STATUS}"
ROLLOUT_PATH = f"/{FLEET_SERVICE}/{ROLLOUT}"
# The names of the config and upgrade resources pushed on a proxy's stream; a '/' no DNS or
# Kubernetes service name holds, so they never meet a service in the proxy's table of resources.
CONFIG_RESOURCE = "meshcore.fleet/config"
UPGRADE_RESOURCE = "meshcore.fleet/upgrade"
FLEET_RESOURCES = (CONFIG_RESOURCE, UPGRADE_RESOURCE)


class ConfigWire(TypedDict):
    """A config the control plane wants one proxy to run: fleet version `config_version` as its
    `text`, or (`rollback_to`) the proxy's own earlier history version, when a rollout undoes itself."""

    type: str  # "config"
    name: str  # CONFIG_RESOURCE
    version: int  # of this resource, as a service's
    exists: bool
    config_version: Optional[int]  # None: the proxy's own config, not one from the fleet
    format: Optional[str]
    text: Optional[str]
    rollback_to: Optional[int]


class UpgradeWire(TypedDict):
    """The meshcore one proxy should run: `command` (an executable's absolute path, and
    arguments) started as `COMMAND run CONFIG --upgrade` to take over the proxy's sockets, unless
    the proxy runs that command already. `request` is the push's own number, so that a push of the
    same command is still news to a proxy that acted on an earlier one."""

    type: str  # "upgrade"
    name: str  # UPGRADE_RESOURCE
    version: int
    exists: bool
    command: list[str]
    request: int


@dataclass(frozen=True)
class UpgradeState:
    """Whether a proxy can replace its process (`available`, else `reason`), and how the last
    upgrade pushed to it went: `resource` (its version), `result` ("applied": a new process took
    over, `pid`; "unchanged": it runs that command already; "refused": `error`)."""

    available: bool = False
    reason: Optional[str] = None
    resource: Optional[int] = None
    result: Optional[str] = None
    error: Optional[str] = None
    pid: Optional[int] = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "resource": self.resource,
            "result": self.result,
            "error": self.error,
            "pid": self.pid,
        }


@dataclass(frozen=True)
class Golden:
    """A proxy's responses since its previous report: `buckets` counts per latency bucket (the
    bounds `buckets_ms`, then one past the last bound)."""

    window_s: float
    responses: int
    failures: int
    buckets_ms: tuple[float, ...]
    buckets: tuple[int, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "responses": self.responses,
            "successes": self.responses - self.failures,
            "failures": self.failures,
            "buckets_ms": list(self.buckets_ms),
            "buckets": list(self.buckets),
        }


@dataclass(frozen=True)
class ConfigState:
    """What a proxy runs: its own history version and hash, the fleet version that is (None: a
    config of its own), and how the last config pushed to it went."""

    version: Optional[int] = None
    hash: Optional[str] = None
    fleet_version: Optional[int] = None
    push: Optional[dict[str, Any]] = None  # {"resource", "config_version", "result", "error"}

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "hash": self.hash,
            "fleet_version": self.fleet_version,
            "push": self.push,
        }


@dataclass(frozen=True)
class Report:
    proxy: ProxyInfo
    config: ConfigState
    metrics: Golden
    upgrade: UpgradeState = field(default_factory=UpgradeState)

    def to_wire(self) -> dict[str, Any]:
        return {
            "proxy": self.proxy.to_wire(),
            "config": self.config.to_wire(),
            "metrics": self.metrics.to_wire(),
            "upgrade": self.upgrade.to_wire(),
        }


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{where}: expected a non-negative integer")
    return value


def _optional_count(value: Any, where: str) -> Optional[int]:
    return None if value is None else _count(value, where)


def _command(value: Any, where: str) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise RequestError(f"{where}: expected a non-empty list of non-empty strings")
    return tuple(value)


def _proxy_info(proxy: Any) -> ProxyInfo:
    if not isinstance(proxy, dict):
        raise RequestError("proxy: expected an object with id, version, zone and cluster")
    started = proxy.get("started_at")
    if started is not None and (isinstance(started, bool) or not isinstance(started, (int, float))):
        raise RequestError("proxy.started_at: expected a time in seconds since the epoch")
    return ProxyInfo(
        id=_string(proxy.get("id"), "proxy.id") or "",
        version=_string(proxy.get("version"), "proxy.version") or "",
        zone=_string(proxy.get("zone"), "proxy.zone", optional=True),
        cluster=_string(proxy.get("cluster"), "proxy.cluster", optional=True),
        pid=_optional_count(proxy.get("pid"), "proxy.pid"),
        started_at=None if started is None else float(started),
        command=_command(proxy.get("command"), "proxy.command"),
    )


def _upgrade_state(upgrade: Any) -> UpgradeState:
    if upgrade is None:
        return UpgradeState(reason="this proxy does not say whether it can replace its process")
    if not isinstance(upgrade, dict):
        raise RequestError("upgrade: expected an object or null")
    return UpgradeState(
        available=upgrade.get("available") is True,
        reason=_string(upgrade.get("reason"), "upgrade.reason", optional=True),
        resource=_optional_count(upgrade.get("resource"), "upgrade.resource"),
        result=_string(upgrade.get("result"), "upgrade.result", optional=True),
        error=_string(upgrade.get("error"), "upgrade.error", optional=True),
        pid=_optional_count(upgrade.get("pid"), "upgrade.pid"),
    )


def parse_report(message: Any) -> Report:
    """A proxy's report, checked field by field (RequestError names the one that is wrong)."""
    if not isinstance(message, dict):
        raise RequestError("the report must be a JSON object")
    unknown = set(message) - {"proxy", "config", "metrics", "upgrade"}
    if unknown:
        raise RequestError(f"{sorted(unknown)[0]}: unknown field")
    info = _proxy_info(message.get("proxy"))
    config = message.get("config") or {}
    if not isinstance(config, dict):
        raise RequestError("config: expected an object")
    push = config.get("push")
    if push is not None and not isinstance(push, dict):
        raise RequestError("config.push: expected an object or null")
    state = ConfigState(
        version=_optional_count(config.get("version"), "config.version"),
        hash=_string(config.get("hash"), "config.hash", optional=True),
        fleet_version=_optional_count(config.get("fleet_version"), "config.fleet_version"),
        push=push,
    )
    metrics = message.get("metrics")
    if not isinstance(metrics, dict):
        raise RequestError(
            "metrics: expected an object with window_s, responses, failures, buckets_ms, buckets"
        )
    window = metrics.get("window_s")
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window < 0:
        raise RequestError("metrics.window_s: expected a non-negative number of seconds")
    responses = _count(metrics.get("responses"), "metrics.responses")
    failures = _count(metrics.get("failures"), "metrics.failures")
    if failures > responses:
        raise RequestError("metrics.failures: more than metrics.responses")
    bounds, buckets = metrics.get("buckets_ms"), metrics.get("buckets")
    if not isinstance(bounds, list) or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds
    ):
        raise RequestError("metrics.buckets_ms: expected a list of bucket bounds in milliseconds")
    if not isinstance(buckets, list) or len(buckets) != len(bounds) + 1:
        raise RequestError("metrics.buckets: expected one count per bound and one past the last")
    counts = tuple(_count(n, f"metrics.buckets[{i}]") for i, n in enumerate(buckets))
    golden = Golden(float(window), responses, failures, tuple(bounds), counts)
    return Report(info, state, golden, _upgrade_state(message.get("upgrade")))
