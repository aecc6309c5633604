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
    id: str
    version: str
    zone: Optional[str] = None
    cluster: Optional[str] = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "zone": self.zone, "cluster": self.cluster}


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
    proxy = message.get("proxy")
    if not isinstance(proxy, dict):
        raise RequestError("proxy: expected an object with id, version, zone and cluster")
    info = ProxyInfo(
        id=_string(proxy.get("id"), "proxy.id") or "",
        version=_string(proxy.get("version"), "proxy.version") or "",
        zone=_string(proxy.get("zone"), "proxy.zone", optional=True),
        cluster=_string(proxy.get("cluster"), "proxy.cluster", optional=True),
    )
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
