"""A link to another cluster's control plane: its services, imported into this one (#18).

The link subscribes to the remote control plane (`Subscription`, as a proxy does) and reports
the remote's services into the local store under their own names. An imported endpoint carries
its cluster (the link's name when the remote left it empty), so a zonal balancer puts it in the
costliest tier.

- Flat mode (remote pods reachable directly): the endpoints as the remote has them.
- Gateway mode: each service's endpoints are replaced by one, the remote cluster's gateway
  (`meshcore gateway`), with its SPIFFE ID as `identity` (traffic to it is mTLS). A remote
  service with no endpoints now is imported with none: the gateway could only answer 503.

Only the remote's own endpoints are imported: those with no cluster or the link's name. One
labelled with another cluster is the remote's own import (from us, perhaps); following it would
loop, so links are one hop, as Linkerd's mirroring is. A remote service left with none of its
own endpoints is not imported.

A link adds endpoints (`adds_endpoints`): an imported service that is also local has the remote
endpoints added after the local ones (the store merges them), so a zonal balancer serves the
local ones first and spills to the other cluster, its costliest tier, under load or when the
local ones are gone; a service only the remote has is imported whole.

When the remote goes away the imported services stay as last known (as a proxy keeps its
state); on reconnection the subscription resumes and the differences arrive as changes. If the
remote does not answer within `first_snapshot_wait` at start, the link starts empty and reports
the services when they come.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ... import __version__
from ...errors import ConfigError
from ..protocol import EndpointWire, ProxyInfo, ResourceWire
from . import Changes, OnChange, Source, endpoint

__all__ = ["Link", "LinkSource", "LinkTls", "parse_link"]

log = logging.getLogger("meshcore.control")

NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")


@dataclass(frozen=True)
class Link:
    """A link as `--link NAME=URL[,gateway=HOST:PORT,gateway-identity=spiffe://...]` gives it."""

    name: str
    url: str
    gateway: Optional[str] = None
    gateway_identity: Optional[str] = None


@dataclass(frozen=True)
class LinkTls:
    """The certificate this control plane presents to the remote one, and the anchors to check it."""

    cert: Path
    key: Path
    trust_anchors: Path

    def files(self) -> tuple[Path, Path, Path]:
        return (self.cert, self.key, self.trust_anchors)


def parse_link(text: str) -> Link:
    """Parses one `--link` value; ConfigError naming the flag and the part that is wrong."""
    where = f"--link {text!r}"
    name, eq, rest = text.partition("=")
    if not eq:
        raise ConfigError(f"{where}: expected NAME=URL[,gateway=HOST:PORT,gateway-identity=spiffe://...]")
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: link name {name!r}: lowercase letters, digits, '.', '-' and '_' (it names the "
            "cluster of the endpoints it imports)"
        )
    url, *options = rest.split(",")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ConfigError(f"{where}: {url!r} is not the remote control plane's https://HOST:PORT")
    settings: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if key not in ("gateway", "gateway-identity"):
            raise ConfigError(f"{where}: unknown option {key!r} (valid: gateway, gateway-identity)")
        if not eq or not value:
            raise ConfigError(f"{where}: {key} needs a value ({key}=...)")
        if key in settings:
            raise ConfigError(f"{where}: {key} given twice")
        settings[key] = value
    gateway, identity = settings.get("gateway"), settings.get("gateway-identity")
    if (gateway is None) != (identity is None):
        raise ConfigError(
            f"{where}: gateway and gateway-identity go together (the gateway is reached over mTLS, "
            "checked against its SPIFFE ID)"
        )
    if gateway is not None and not HOST_PORT.fullmatch(gateway):
        raise ConfigError(f"{where}: gateway {gateway!r}: expected HOST:PORT")
    if gateway is not None and not 0 < int(gateway.rsplit(":", 1)[1]) < 65536:
        raise ConfigError(f"{where}: gateway {gateway!r}: the port must be 1 to 65535")
    if identity is not None and not identity.startswith("spiffe://"):
        raise ConfigError(f"{where}: gateway-identity {identity!r}: expected a SPIFFE ID (spiffe://...)")
    return Link(name, url, gateway, identity)


class LinkSource(Source):
    """Imports the services of the control plane at `link.url` (see the module docstring)."""

    adds_endpoints = True

    def __init__(
        self,
        link: Link,
        tls: Optional[LinkTls] = None,
        *,
        first_snapshot_wait: float = 5.0,
        cluster: Optional[str] = None,
    ):
        """`tls` is needed for an https:// remote; `cluster` is this control plane's own, told
        to the remote with the subscription."""
        from ..client import Subscription  # grpc, loaded only when a link is made

        self.link = link
        self.name = f"link:{link.name}"
        self._wait = first_snapshot_wait
        self._on_change: Optional[OnChange] = None
        info = ProxyInfo(f"{self.name}/{socket.gethostname()}-{os.getpid()}", __version__, cluster=cluster)
        try:
            self._subscription = Subscription(
                link.url,
                ["*"],
                self._on_update,
                tls=None if tls is None else tls.files(),
                proxy_info=info,
            )
        except ConfigError as e:
            where = "--link-cert, --link-key and --link-trust-anchors" if "tls=" in str(e) else "its URL"
            raise ConfigError(f"--link {link.name}: {e} (check {where})") from None

    @property
    def gateway_mode(self) -> bool:
        return self.link.gateway is not None

    def describe(self) -> str:
        via = f" via gateway {self.link.gateway}" if self.link.gateway else ""
        return f"link {self.link.name} ({self.link.url}{via})"

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._subscription.start()
        if not self._subscription.wait_synced(self._wait):
            log.warning(
                "link %s: %s not reached within %gs (%s); starting without its services",
                self.link.name,
                self.link.url,
                self._wait,
                self._subscription.last_error or "no answer",
            )

    def stop(self) -> None:
        self._subscription.stop()
        self._on_change = None

    def imported(self, resource: ResourceWire) -> Optional[list[EndpointWire]]:
        """What this link serves for one remote resource; None when it imports nothing of it."""
        if not resource["exists"]:
            return None
        own = [e for e in resource["endpoints"] if e.get("cluster") in (None, "", self.link.name)]
        if resource["endpoints"] and not own:
            return None  # only endpoints the remote imported itself
        if self.link.gateway is not None:
            if not own:
                return []
            return [endpoint(self.link.gateway, cluster=self.link.name, identity=self.link.gateway_identity)]
        return [{**e, "cluster": self.link.name} for e in own]

    def _on_update(self, changed: Sequence[ResourceWire]) -> None:
        services: dict[str, list[EndpointWire]] = {}
        removed: list[str] = []
        for resource in changed:
            if resource.get("type") != "service":
                continue
            endpoints = self.imported(resource)
            if endpoints is None:
                removed.append(resource["name"])
            else:
                services[resource["name"]] = endpoints
        on_change = self._on_change
        if on_change is not None and (services or removed):
            on_change(Changes(services=services, removed=removed))
