"""The proxy's side of discovery: a `Subscription` to the control plane named by
`[discovery] control`, whose updates become the endpoints of the services the config lists
without any. It follows every service ("*"), so a reload that adds such a service finds its
endpoints already known; the proxy keeps serving from the last known state while the control
plane is away. It also reports to the control plane (version, config, golden metrics) and acts on
the configs and upgrades it pushes (agent.py, reporter.py)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from .. import __version__
from ..config import Config, parse_duration
from ..process import STARTED_AT, meshcore_command
from .agent import FleetAgent
from .client import Subscription
from .protocol import ConfigWire, ResourceWire, UpgradeWire
from .reporter import Reporter

if TYPE_CHECKING:
    from ..identity.agent import IdentityAgent

__all__ = ["Follower"]

# How long start() waits for the first snapshot before serving without it.
FIRST_SNAPSHOT_WAIT = 5.0

Apply = Callable[[dict[str, list[dict[str, Any]]]], None]


def _pems_of(agent: IdentityAgent) -> Callable[[], tuple[bytes, bytes, bytes]]:
    def pems() -> tuple[bytes, bytes, bytes]:
        chain, key = agent.current()
        return chain.encode(), key.encode(), agent.trust_anchors_pem.encode()

    return pems


def _endpoints(resource: ResourceWire) -> list[dict[str, Any]]:
    """What the core takes of an endpoint; "does not exist" and "none now" are both none."""
    if not resource["exists"]:
        return []
    keys = ("addr", "zone", "cluster", "identity")
    return [{k: e.get(k) for k in keys} for e in resource["endpoints"]]


class Follower:
    """Over https, the subscription speaks mTLS as the proxy: with its certificate files, or with
    the certificate `agent` got from the identity service (held in memory, renewed)."""

    def __init__(
        self,
        config: Config,
        proxy_id: str,
        apply: Apply,
        agent: Optional[IdentityAgent] = None,
        proxy: Any = None,
    ) -> None:
        """`proxy` (a meshcore.Proxy) is what reports read and pushed configs change; None: no
        reports."""
        assert config.discovery is not None
        urls = config.discovery.urls
        tls: Any = None
        if any(url.startswith("https:") for url in urls):
            identity = config.identity
            assert identity is not None  # config.cross_check refuses https without an identity
            if identity.issuer is not None:
                assert agent is not None
                tls = _pems_of(agent)
            else:
                assert identity.cert is not None and identity.key is not None
                tls = (
                    config.resolve_path(identity.cert),
                    config.resolve_path(identity.key),
                    config.resolve_path(identity.trust_anchors),
                )
        self._apply = apply
        info = {
            "id": proxy_id,
            "version": __version__,
            "zone": config.zone,
            "cluster": config.cluster,
            "pid": os.getpid(),
            "started_at": STARTED_AT,
            "command": tuple(meshcore_command()),
        }
        self._subscription = Subscription(
            urls,
            ["*"],
            self._on_update,
            tls=tls,
            proxy_info=info,
            server_identity=config.discovery.control_identity,
        )
        self._agent: Optional[FleetAgent] = None
        self._reporter: Optional[Reporter] = None
        self._released = False  # the agent and reporter started
        if proxy is not None:
            self._agent = FleetAgent(proxy, info)
            interval = parse_duration(config.discovery.report_interval) / 1000
            self._reporter = Reporter(self._subscription, self._agent.collect, self._agent.sent, interval)
            self._agent.on_applied = self._reporter.poke

    @property
    def subscription(self) -> Subscription:
        return self._subscription

    def start(self, wait: Optional[float] = FIRST_SNAPSHOT_WAIT, hold: bool = False) -> None:
        """With `hold`, reports and pushes wait for `release()` (the subscription does not)."""
        if not hold:
            self.release()
        self._subscription.start()
        if wait and not self._subscription.wait_synced(wait):
            print(
                f"meshcore: control plane not reached within {wait:g}s; serving without discovered "
                "endpoints until it answers",
                file=sys.stderr,
                flush=True,
            )

    def release(self) -> None:
        if self._agent is not None and self._reporter is not None and not self._released:
            self._released = True
            self._agent.start()
            self._reporter.start()

    def stop(self) -> None:
        self._subscription.stop()
        if self._agent is not None and self._reporter is not None and self._released:
            self._reporter.stop()
            self._agent.stop()

    def _on_update(self, changed: list[ResourceWire]) -> None:
        for resource in changed:
            if resource["type"] == "config" and self._agent is not None:
                self._agent.on_config(cast(ConfigWire, resource))
            elif resource["type"] == "upgrade" and self._agent is not None:
                self._agent.on_upgrade(cast(UpgradeWire, resource))
        services = {r["name"]: _endpoints(r) for r in changed if r["type"] == "service"}
        if not services:
            return
        try:
            self._apply(services)
        except Exception as e:  # noqa: BLE001 - a bad update must not end the subscription
            print(f"meshcore: discovery update refused: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
