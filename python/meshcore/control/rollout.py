"""A fleet rollout: a config version, or another meshcore, pushed to the proxies in waves, judged
after each, undone on its own (what is pushed and how it is undone: meshcore.control.changes).

The plan: the proxies subscribed now, ordered by id; waves are cumulative sizes, each a count or a
percentage of the fleet ("1,25%,50%,100%": one canary, then up to a quarter, half, all); a plan
always ends with every proxy. For each wave:

1. The change is pushed to the wave's proxies over their streams; each applies it (a config
   through its own lifecycle, validated, versioned, with its own verification; a meshcore by
   replacing its process) and reports what it runs. One that refuses it, or does not report it
   within `apply_timeout`, fails the rollout.
2. Bake: for `bake`, the wave's proxies serve on the new version.
3. Verdict: the responses the wave's proxies reported since they reported the new version (from the
   new process only: the one it replaced reports on while it drains), against
   those of the proxies not moved yet over the same time, or (none left, or too few responses
   there) against every proxy before the rollout began. Worse means: the error rate higher by more
   than `max_error_rate_increase` (absolute: 0.01 is one percentage point), or the p99 above
   `max_p99_ratio` x the other's p99 (floored at P99_FLOOR_MS: at the fastest buckets, noise alone
   moves a p99 by a bucket). A wave short of `min_requests` responses bakes on (as long again, at
   least 10 s); one still short then is not judged (said so).
   A proxy moved earlier that no longer runs the change (its own verification rolled it back)
   fails the rollout too.

On a failure every moved proxy is sent back to what it ran before (its own history version, which
its lifecycle rolls back to; the meshcore command it reported), and the rollout ends "failed"
with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import format_of, loads
from ..errors import MeshcoreError
from .changes import Change, ConfigChange, PushConfig, PushUpgrade, RolloutFailed, VersionChange
from .fleet import ConfigVersion, Fleet, Window
from .protocol import RequestError

__all__ = ["RolloutPlan", "Rollout", "parse_rollout", "parse_waves", "resolve_change", "wave_sizes"]

log = logging.getLogger("meshcore.control")

P99_FLOOR_MS = 5.0
BASELINE_SECONDS = 30.0  # at least this much of the time before the rollout is the baseline
EXTRA_BAKE_SECONDS = 10.0  # a wave short of min_requests bakes on for at least this long
EXTRA_BAKE_POLL = 0.2
DEFAULT_WAVES = ("1", "25%", "50%", "100%")

Emit = Callable[[dict[str, Any]], None]


def parse_waves(specs: list[str]) -> list[tuple[str, float]]:
    """["1", "25%"] -> [("count", 1), ("percent", 25.0)]; RequestError names a bad one."""
    if not specs:
        raise RequestError("waves: expected at least one wave, e.g. 1,25%,50%,100%")
    out: list[tuple[str, float]] = []
    for i, spec in enumerate(specs):
        text = str(spec).strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 < percent <= 100:
                    raise ValueError
                out.append(("percent", percent))
            else:
                count = int(text)
                if count < 1:
                    raise ValueError
                out.append(("count", count))
        except ValueError:
            raise RequestError(
                f"waves[{i}]: {spec!r} is not a number of proxies (1 or more) or a percentage (1% to 100%)"
            ) from None
    return out


def wave_sizes(waves: list[tuple[str, float]], fleet_size: int) -> list[int]:
    """Cumulative sizes for a fleet of `fleet_size`, each larger than the one before, the last all."""
    sizes: list[int] = []
    for kind, value in [*waves, ("percent", 100.0)]:
        size = int(value) if kind == "count" else math.ceil(fleet_size * value / 100)
        size = min(fleet_size, size)
        if size > (sizes[-1] if sizes else 0):
            sizes.append(size)
    return sizes


@dataclass(frozen=True)
class RolloutPlan:
    """What the operator asked for: a config (given as text: not yet a fleet version; or a version
    held), or a meshcore `command`."""

    version: Optional[int]
    command: Optional[tuple[str, ...]]
    text: Optional[str]
    format: Optional[str]
    source: str
    waves: list[tuple[str, float]]
    bake: float
    apply_timeout: float
    max_error_rate_increase: float
    max_p99_ratio: float
    min_requests: int


def _number(message: dict[str, Any], key: str, default: float, low: float, high: float = math.inf) -> float:
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bound = f"from {low:g} to {high:g}" if high != math.inf else f"{low:g} or more"
        raise RequestError(f"{key}: expected a number {bound}")
    return float(value)


def parse_rollout(message: Any) -> RolloutPlan:
    if not isinstance(message, dict):
        raise RequestError("the rollout request must be a JSON object")
    known = {"config", "version", "meshcore", "waves", "bake_s", "apply_timeout_s", "max_error_rate_increase"}
    unknown = set(message) - known - {"max_p99_ratio", "min_requests"}
    if unknown:
        raise RequestError(f"{sorted(unknown)[0]}: unknown field")
    config, version, meshcore = message.get("config"), message.get("version"), message.get("meshcore")
    if [config, version, meshcore].count(None) != 2:
        raise RequestError(
            "give one of config (the new config's text), version (a config the control plane holds) "
            "or meshcore (the command of the meshcore to run)"
        )
    command = None if meshcore is None else _meshcore_command(meshcore)
    text = fmt = None
    source = ""
    if config is not None:
        if not isinstance(config, dict) or not isinstance(config.get("text"), str):
            raise RequestError("config: expected {text, format, source}")
        text, source = config["text"], str(config.get("source") or "<config>")
        fmt = config.get("format") or format_of(Path(source))
        if fmt not in ("toml", "yaml", "json"):
            raise RequestError(f"config.format: {fmt!r}: expected toml, yaml or json")
    elif version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise RequestError("version: expected a config version number (1 or more)")
    waves = message.get("waves", list(DEFAULT_WAVES))
    if not isinstance(waves, list):
        raise RequestError("waves: expected a list such as ['1', '25%', '100%']")
    min_requests = message.get("min_requests", 20)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
        raise RequestError("min_requests: expected a non-negative integer")
    return RolloutPlan(
        version=version,
        command=command,
        text=text,
        format=fmt,
        source=source,
        waves=parse_waves(waves),
        bake=_number(message, "bake_s", 30.0, 0.0),
        apply_timeout=_number(message, "apply_timeout_s", 60.0, 0.1),
        max_error_rate_increase=_number(message, "max_error_rate_increase", 0.01, 0.0, 1.0),
        max_p99_ratio=_number(message, "max_p99_ratio", 1.5, 1.0),
        min_requests=min_requests,
    )


def _meshcore_command(value: Any) -> tuple[str, ...]:
    """ "/opt/m2/bin/meshcore" or ["/usr/bin/python3", "-m", "meshcore"]: the executable is run on
    each proxy's host, so it must be an absolute path there (not ours to check)."""
    command = [value] if isinstance(value, str) else value
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise RequestError("meshcore: expected the meshcore executable's path, or a list: path and arguments")
    if not command[0].startswith("/"):
        raise RequestError(
            f"meshcore: {command[0]!r} is not an absolute path; the proxies run it on their own hosts, "
            "from their own directories"
        )
    return tuple(command)


def resolve_change(plan: RolloutPlan, fleet: Fleet, push: PushConfig, push_upgrade: PushUpgrade) -> Change:
    """What `plan` moves the fleet to; RequestError if it names nothing that can be rolled out."""
    if plan.command is not None:
        return VersionChange(fleet, plan.command, push_upgrade)
    return ConfigChange(fleet, resolve_config(plan, fleet), push, given_as_text=plan.text is not None)


def resolve_config(plan: RolloutPlan, fleet: Fleet) -> ConfigVersion:
    """The fleet version to roll out: the one named, or the text given made a new one once it
    validates as a proxy config (the files it names are the proxies' to check, not ours)."""
    if plan.version is not None:
        found = fleet.config(plan.version)
        if found is None:
            held = ", ".join(f"v{c.version}" for c in fleet.configs()) or "none yet"
            raise RequestError(f"version: no config v{plan.version} in the control plane (held: {held})")
        return found
    assert plan.text is not None and plan.format is not None
    try:
        loads(plan.text, plan.format, name=plan.source)
    except MeshcoreError as e:
        raise RequestError(f"config: {e}") from None
    return fleet.add_config(plan.text, plan.format, plan.source)


def _proxies(n: int) -> str:
    return f"{n} prox{'y' if n == 1 else 'ies'}"


def _pct(rate: Optional[float]) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def describe(window: Window) -> str:
    return f"success {_pct(window.success_rate)}, p99 {_ms(window.p(0.99))} ({window.responses} responses)"


class Rollout:
    """One rollout of `change` over the subscribed proxies; `run()` emits progress and returns
    True when every proxy runs it, False when it was undone."""

    def __init__(
        self,
        plan: RolloutPlan,
        change: Change,
        fleet: Fleet,
        reported: Callable[[], Awaitable[None]],
        emit: Emit,
    ) -> None:
        self.plan = plan
        self.change = change
        self.fleet = fleet
        self._reported = reported  # waits for the next report from any proxy
        self._emit = emit
        self.moved: list[str] = []
        self._on_since: dict[str, float] = {}  # when each moved proxy first reported the change
        self.baseline: list[str] = []  # the proxies the rollout began with
        self.state = "running"

    def say(self, kind: str, message: str, **fields: Any) -> None:
        change = self.change
        log.info("rollout %s: %s", change.log_name, message)
        self._emit(
            {
                "kind": kind,
                "message": message,
                "target": change.target,
                "config_version": change.config_version,
                "meshcore": change.command,
                **fields,
            }
        )

    async def run(self) -> bool:
        proxies = [p for p in self.fleet.ids(subscribed_only=True) if self.fleet.last_seen(p)]
        if not proxies:
            self.state = "failed"
            self.say("failed", "no proxy is subscribed and reporting: nothing to roll out to")
            return False
        try:
            self.change.check(proxies)
        except RolloutFailed as e:
            self.state = "failed"
            self.say("failed", f"refused: {e}", reason=str(e), not_back=[])
            return False
        sizes = wave_sizes(self.plan.waves, len(proxies))
        self.baseline = proxies
        self.change.remember(proxies)
        started = time.monotonic()
        self.say(
            "plan",
            f"{len(proxies)} proxies in {len(sizes)} waves of {', '.join(map(str, sizes))} (cumulative), "
            f"bake {self.plan.bake:g}s",
            proxies=proxies,
            waves=sizes,
        )
        try:
            done = 0
            for number, size in enumerate(sizes, 1):
                wave = proxies[done:size]
                done = size
                label = f"wave {number}/{len(sizes)}{' (canary)' if number == 1 else ''}"
                await self._move(wave, label)
                await asyncio.sleep(self.plan.bake)
                await self._until_enough(wave)
                self._check_still_on()
                self._judge(wave, proxies[done:], started, label)
        except RolloutFailed as e:
            await self._undo(str(e))
            return False
        self.state = "done"
        self.say("done", f"done: {len(proxies)} proxies run {self.change.target}")
        return True

    async def _move(self, wave: list[str], label: str) -> None:
        target = self.change.target
        resources = {p: self.change.send(p) for p in wave}
        self.say("wave", f"{label}: {', '.join(wave)} -> {target}", proxies=wave)
        self.moved += wave
        waiting = set(wave)
        deadline = time.monotonic() + self.plan.apply_timeout
        while waiting:
            for p in sorted(waiting):
                if self.change.arrived(p, resources[p], label):
                    waiting.discard(p)
            if not waiting:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise RolloutFailed(
                    f"{label}: {', '.join(sorted(waiting))} did not report {target} "
                    f"within {self.plan.apply_timeout:g}s"
                )
            try:
                await asyncio.wait_for(self._reported(), left)
            except asyncio.TimeoutError:
                pass
        self._on_since.update({p: self.fleet.last_seen(p) for p in wave})
        self.say(
            "applied",
            f"{label}: {_proxies(len(wave))} on {self.change.runs(wave)}; baking {self.plan.bake:g}s",
            proxies=wave,
        )

    def _check_still_on(self) -> None:
        gone = [p for p in self.moved if not self.change.on(p)]
        if gone:
            raise RolloutFailed(
                f"{', '.join(gone)} no longer run {self.change.target} "
                "(rolled back by their own verification, or restarted?)"
            )

    def _wave_window(self, wave: list[str]) -> Window:
        now = time.monotonic()
        moved = Window()
        for p in wave:  # each from the report that said it runs the new version
            moved.merge(self.fleet.window([p], self._on_since[p], now, current_only=True))
        return moved

    async def _until_enough(self, wave: list[str]) -> None:
        """A wave whose proxies have not yet reported `min_requests` answers bakes on, up to
        as long again (at least EXTRA_BAKE_SECONDS): judged on too few, a bad version would
        pass for lack of evidence (a slow machine, a late report)."""
        deadline = time.monotonic() + max(self.plan.bake, EXTRA_BAKE_SECONDS)
        while self._wave_window(wave).responses < self.plan.min_requests and time.monotonic() < deadline:
            await asyncio.sleep(EXTRA_BAKE_POLL)

    def _judge(self, wave: list[str], unmoved: list[str], started: float, label: str) -> None:
        now = time.monotonic()
        moved = self._wave_window(wave)
        bake_start = min(self._on_since[p] for p in wave)
        against, what = self.fleet.window(unmoved, bake_start, now), "the proxies not moved yet"
        if against.responses < self.plan.min_requests:
            span = max(self.plan.bake, BASELINE_SECONDS)
            against, what = (
                self.fleet.window(self.baseline, started - span, started),
                "every proxy before the rollout",
            )
        fields = {"wave_metrics": moved.summary(), "against": what, "against_metrics": against.summary()}
        if moved.responses < self.plan.min_requests:
            self.say(
                "verdict",
                f"{label}: not judged: {moved.responses} responses, fewer than {self.plan.min_requests}",
                ok=True,
                **fields,
            )
            return
        problems = []
        increase = (moved.error_rate or 0.0) - (
            against.error_rate or 0.0 if against.responses >= self.plan.min_requests else 0.0
        )
        if increase > self.plan.max_error_rate_increase:
            problems.append(
                f"error rate up {increase * 100:.2f} points "
                f"(limit {self.plan.max_error_rate_increase * 100:g})"
            )
        p99, base = moved.p(0.99), against.p(0.99)
        if against.responses >= self.plan.min_requests and p99 is not None and base is not None:
            limit = self.plan.max_p99_ratio * max(base, P99_FLOOR_MS)
            if p99 > limit:
                problems.append(
                    f"p99 {_ms(p99)} above {_ms(limit)} ({self.plan.max_p99_ratio:g} x {_ms(base)})"
                )
        summary = f"{describe(moved)}; {what}: {describe(against)}"
        if problems:
            self.say("verdict", f"{label}: worse: {'; '.join(problems)} ({summary})", ok=False, **fields)
            raise RolloutFailed(f"{label} made things worse: {'; '.join(problems)}")
        self.say("verdict", f"{label}: ok: {summary}", ok=True, **fields)

    async def _undo(self, reason: str) -> None:
        self.state = "rolling back"
        moved = _proxies(len(self.moved))
        self.say("rollback", f"rolling back: {reason}; {moved} back to what they ran before")
        resources = {p: self.change.send_back(p) for p in self.moved}
        waiting = set(self.moved)
        refused: dict[str, str] = {}
        deadline = time.monotonic() + self.plan.apply_timeout
        while waiting and time.monotonic() < deadline:
            for p in sorted(waiting):
                outcome = self.change.back(p, resources[p])
                if outcome is not None:
                    waiting.discard(p)
                    if outcome != "back":
                        refused[p] = outcome
            if waiting:
                try:
                    await asyncio.wait_for(self._reported(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        self.state = "failed"
        not_back = sorted(waiting | set(refused))
        stuck = f"; not confirmed back: {', '.join(sorted(waiting))}" if waiting else ""
        stuck += "".join(f"; {p} refused to go back: {why}" for p, why in sorted(refused.items()))
        self.say("failed", f"failed and rolled back: {reason}{stuck}", reason=reason, not_back=not_back)
