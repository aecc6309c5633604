"""What a rollout moves the fleet to, and how it knows a proxy got there or came back: a config
version (`ConfigChange`) or another meshcore (`VersionChange`). The waves, bake and judging are
the same for both (meshcore.control.rollout).

- A config is pushed as a `config` resource; the proxy applies it through its lifecycle and reports
  the fleet version it runs. Undone by a push back to its own earlier history version.
- A meshcore is pushed as an `upgrade` resource naming its command (an executable's absolute path):
  the proxy starts `COMMAND run CONFIG --upgrade`, which takes over its sockets and reports under
  the same id with that command and its version; the old process drains. Undone by an upgrade to
  the command the proxy reported before the rollout. A proxy that cannot replace its process (not
  under `meshcore run`, no state dir) says so in its reports, and the rollout refuses to start.
"""

from __future__ import annotations

from typing import Callable, Optional

from .fleet import ConfigVersion, Fleet
from .protocol import ConfigState, ProxyInfo

__all__ = ["Change", "ConfigChange", "RolloutFailed", "VersionChange"]

PushConfig = Callable[[str, Optional[int], Optional[ConfigVersion], Optional[int]], int]
PushUpgrade = Callable[[str, tuple[str, ...]], int]


class RolloutFailed(Exception):
    pass


class Change:
    """One kind of change. `send(p)` pushes it and returns the resource version; `arrived(p, r)`
    is True once p reports it runs it for push r (RolloutFailed if p refused r); `on(p)` whether p
    still runs it; `send_back(p)` and `back(p, r)` the same for the state before the rollout
    ("back", an error, or None while waiting)."""

    kind = ""
    target = ""  # what the fleet moves to, in messages: "config v3", "meshcore /opt/m2/bin/meshcore"
    log_name = ""  # in the control plane's log lines: "rollout v3: ..."
    config_version: Optional[int] = None
    command: Optional[list[str]] = None

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def introduce(self) -> str:
        raise NotImplementedError

    def check(self, proxies: list[str]) -> None:
        """Before any wave: RolloutFailed if some proxy cannot take the change at all."""

    def remember(self, proxies: list[str]) -> None:
        raise NotImplementedError

    def send(self, proxy: str) -> int:
        raise NotImplementedError

    def arrived(self, proxy: str, resource: int, label: str) -> bool:
        raise NotImplementedError

    def on(self, proxy: str) -> bool:
        raise NotImplementedError

    def runs(self, proxies: list[str]) -> str:
        """What the wave's proxies run now, said once they have moved."""
        return self.target

    def send_back(self, proxy: str) -> int:
        raise NotImplementedError

    def back(self, proxy: str, resource: int) -> Optional[str]:
        raise NotImplementedError


class ConfigChange(Change):
    kind = "config"

    def __init__(self, fleet: Fleet, config: ConfigVersion, push: PushConfig, given_as_text: bool) -> None:
        super().__init__(fleet)
        self.config = config
        self._push = push
        self._given_as_text = given_as_text
        self.config_version = config.version
        self.target = f"config v{config.version}"
        self.log_name = f"v{config.version}"
        self.baseline: dict[str, ConfigState] = {}

    def introduce(self) -> str:
        origin = f"from {self.config.source}" if self._given_as_text else "held"
        return f"config v{self.config.version} ({origin}, {len(self.config.text.encode())} bytes)"

    def remember(self, proxies: list[str]) -> None:
        self.baseline = {p: self.fleet.config_of(p) for p in proxies}

    def send(self, proxy: str) -> int:
        return self._push(proxy, self.config.version, self.config, None)

    def arrived(self, proxy: str, resource: int, label: str) -> bool:
        state = self.fleet.config_of(proxy)
        push = state.push or {}
        if push.get("resource") == resource and push.get("result") == "refused":
            raise RolloutFailed(f"{label}: {proxy} refused {self.target}: {push.get('error')}")
        return state.fleet_version == self.config.version and push.get("resource") == resource

    def on(self, proxy: str) -> bool:
        return self.fleet.config_of(proxy).fleet_version == self.config.version

    def send_back(self, proxy: str) -> int:
        before = self.baseline[proxy]
        return self._push(proxy, before.fleet_version, None, before.version)

    def back(self, proxy: str, resource: int) -> Optional[str]:
        state = self.fleet.config_of(proxy)
        if state.hash == self.baseline[proxy].hash and (state.push or {}).get("resource") == resource:
            return "back"
        return None


class VersionChange(Change):
    kind = "meshcore"

    def __init__(self, fleet: Fleet, command: tuple[str, ...], push: PushUpgrade) -> None:
        super().__init__(fleet)
        self._command = command
        self._push = push
        self.command = list(command)
        self.target = f"meshcore {' '.join(command)}"
        self.log_name = self.target
        self.baseline: dict[str, ProxyInfo] = {}

    def introduce(self) -> str:
        return f"{self.target}: each proxy is replaced by a process of it, taking over its sockets"

    def check(self, proxies: list[str]) -> None:
        cannot = []
        for p in proxies:
            upgrade, info = self.fleet.upgrade_of(p), self.fleet.proxy(p)
            if info is None or info.command is None:
                cannot.append(f"{p}: it does not report the meshcore it runs (an older meshcore?)")
            elif not upgrade.available:
                cannot.append(f"{p}: {upgrade.reason or 'it cannot replace its process'}")
        if cannot:
            raise RolloutFailed(
                f"{len(cannot)} of {len(proxies)} proxies cannot take another meshcore, nothing moved: "
                + "; ".join(cannot)
            )

    def remember(self, proxies: list[str]) -> None:
        for p in proxies:
            info = self.fleet.proxy(p)
            assert info is not None  # check() saw it
            self.baseline[p] = info

    def send(self, proxy: str) -> int:
        return self._push(proxy, self._command)

    def _outcome(self, proxy: str, resource: int, command: tuple[str, ...]) -> Optional[str]:
        """ "there" once the proxy reports `command` after acting on push `resource`; the reason
        if it refused that push; None while neither."""
        upgrade, info = self.fleet.upgrade_of(proxy), self.fleet.proxy(proxy)
        if upgrade.resource != resource:
            return None
        if upgrade.result == "refused":
            return upgrade.error or "refused"
        if info is not None and info.command == command and upgrade.result in ("applied", "unchanged"):
            return "there"
        return None

    def arrived(self, proxy: str, resource: int, label: str) -> bool:
        outcome = self._outcome(proxy, resource, self._command)
        if outcome not in (None, "there"):
            raise RolloutFailed(f"{label}: {proxy} refused {self.target}: {outcome}")
        return outcome == "there"

    def on(self, proxy: str) -> bool:
        info = self.fleet.proxy(proxy)
        return info is not None and info.command == self._command

    def runs(self, proxies: list[str]) -> str:
        infos = [self.fleet.proxy(p) for p in proxies]
        now = {info.version for info in infos if info is not None}
        before = {self.baseline[p].version for p in proxies}
        return f"{self.target} (version {', '.join(sorted(now))}; was {', '.join(sorted(before))})"

    def send_back(self, proxy: str) -> int:
        command = self.baseline[proxy].command
        assert command is not None
        return self._push(proxy, command)

    def back(self, proxy: str, resource: int) -> Optional[str]:
        command = self.baseline[proxy].command
        assert command is not None
        outcome = self._outcome(proxy, resource, command)
        return "back" if outcome == "there" else outcome
