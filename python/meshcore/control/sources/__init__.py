"""Where the control plane learns services and endpoints: sources, each a small adapter.

A source is started with a callback and reports what changed through it; the store applies the
changes, numbers them (versions) and pushes them to subscribers. Write your own by subclassing
`Source`:

    class Static(Source):
        def start(self, on_change):
            on_change(Changes(services={"web": [endpoint("10.0.0.1:80", zone="a")]}))
        def stop(self):
            pass

The contract:
- `start(on_change)` reports the source's whole initial state through `on_change` before it returns,
  so the first snapshot a proxy gets is complete; later changes it reports from any thread.
- A service the source no longer has is reported in `Changes.removed` (it then reads
  "does not exist"); a service with an empty endpoint list exists with no endpoints now.
- Reporting a service again with the same endpoints is harmless: the store only counts real changes.
- `stop()` ends its threads or tasks; nothing is reported after it returns.

Here now: `directory` (a watched directory of TOML/YAML documents, the embedded default), `dns`
(A/AAAA and SRV, with TTLs), `kubernetes` (Services and EndpointSlices, list then watch) and `link`
(another cluster's control plane, whose endpoints are added to the local ones).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..protocol import EndpointWire

__all__ = ["Changes", "OnChange", "Source", "endpoint"]


@dataclass(frozen=True)
class Changes:
    """Services set (name -> the full endpoint list, replacing the old one) and services removed."""

    services: Mapping[str, Sequence[EndpointWire]] = field(default_factory=dict)
    removed: Collection[str] = ()


OnChange = Callable[[Changes], None]


def endpoint(
    addr: str,
    *,
    zone: Optional[str] = None,
    cluster: Optional[str] = None,
    identity: Optional[str] = None,
    weight: int = 1,
    protocol: Optional[str] = None,
) -> EndpointWire:
    """One endpoint as the wire carries it."""
    return {
        "addr": addr,
        "zone": zone,
        "cluster": cluster,
        "identity": identity,
        "weight": weight,
        "protocol": protocol,
    }


class Source(ABC):
    """A source of services and endpoints (see the module docstring for the contract)."""

    name: str = "source"
    # Its endpoints are added to those of the source that owns the service, instead of competing
    # for it (a link to another cluster: see store.py).
    adds_endpoints: bool = False

    @abstractmethod
    def start(self, on_change: OnChange) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def describe(self) -> str:
        """What the control plane's ready line calls this source."""
        return self.name
