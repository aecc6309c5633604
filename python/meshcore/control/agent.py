"""The proxy's side of the fleet: what it reports to the control plane, and the configs the control
plane pushes to it.

A report holds the proxy (id, meshcore version, zone, cluster), the config it runs (its lifecycle's
history version and hash, and which fleet version that is), how the last pushed config went, and
its golden metrics since the previous report that got through: responses, failures (what the
proxy classifies as failures: 5xx, connect errors, timeouts, gRPC errors) and latency buckets,
summed over routes from `Proxy.route_stats()`.

A pushed config goes through the proxy's Lifecycle, as `meshcore reload` does (validated,
recorded as a new history version, with its own verification and rollback); a push that undoes a
rollout rolls back to the proxy's own history version. A pushed upgrade (another meshcore's
command) goes through the proxy's Upgrader, as `meshcore upgrade --meshcore PATH` does: the new
process takes over the sockets and reports under the same id; this one drains and exits. Pushes
are acted on by a thread of their own, in the order pushed, so the subscription's stream is never
held up by a reload or an upgrade.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, Optional

from .protocol import ConfigWire, UpgradeWire

__all__ = ["FleetAgent", "golden_since"]


def golden_since(before: Optional[dict[str, Any]], now: dict[str, Any]) -> dict[str, Any]:
    """Responses, failures and latency buckets (one past the last bound) summed over routes between
    two `route_stats()` samples. A route whose counts went down (removed and added back by a
    reload) counts from zero, as Prometheus' rate() does; lifecycle.verify.window has the same rule."""
    bounds = list(now["buckets_ms"])
    earlier = (before or {}).get("routes", {})
    total, failed, buckets = 0, 0, [0] * (len(bounds) + 1)
    for name, route in now["routes"].items():
        responses, failures, counts = route["responses"], route["failures"], list(route["buckets"])
        then = earlier.get(name)
        if then is not None and then["responses"] <= responses and then["failures"] <= failures:
            responses -= then["responses"]
            failures -= then["failures"]
            counts = [max(0, a - b) for a, b in zip(counts, then["buckets"])]
        if len(counts) == len(bounds):  # the core keeps no bucket past the last bound
            counts.append(max(0, responses - sum(counts)))
        total += responses
        failed += failures
        buckets = [a + b for a, b in zip(buckets, counts)]
    return {
        "responses": total,
        "failures": failed,
        "successes": total - failed,
        "buckets_ms": bounds,
        "buckets": buckets,
    }


def _log(message: str) -> None:
    print(f"meshcore: {message}", file=sys.stderr, flush=True)


class FleetAgent:
    def __init__(self, proxy: Any, info: dict[str, Any]) -> None:
        self._proxy = proxy
        self._info = info
        self._lock = threading.Lock()
        self._base: Optional[tuple[float, dict[str, Any]]] = None  # at the last report sent
        self._taken: dict[int, tuple[float, dict[str, Any]]] = {}  # id(report) -> its sample
        self._fleet_of: dict[int, Optional[int]] = {}  # history version -> fleet version
        self._push: Optional[dict[str, Any]] = None
        self._upgrade: dict[str, Any] = {}  # how the last pushed upgrade went
        self._pushes: queue.Queue[Optional[Any]] = queue.Queue()  # ConfigWire | UpgradeWire
        self._worker: Optional[threading.Thread] = None
        self.on_applied: Any = None  # called after each push is acted on (the reporter's poke)

    def start(self) -> None:
        self._worker = threading.Thread(target=self._apply_pushes, name="meshcore-fleet-config", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._pushes.put(None)
            self._worker.join(10)

    # -- reports

    def collect(self) -> dict[str, Any]:
        now, stats = time.monotonic(), self._proxy.route_stats()
        with self._lock:
            base = self._base
            push = dict(self._push) if self._push else None
            upgrade = dict(self._upgrade)
        metrics = golden_since(base[1] if base else None, stats)
        metrics["window_s"] = round(now - base[0], 3) if base else 0.0
        reason = self._cannot_upgrade()
        report = {
            "proxy": dict(self._info),
            "config": {**self._config_state(), "push": push},
            "metrics": metrics,
            "upgrade": {"available": reason is None, "reason": reason, **upgrade},
        }
        with self._lock:
            self._taken = {id(report): (now, stats)}  # only the newest can be the one sent next
        return report

    def sent(self, report: dict[str, Any]) -> None:
        with self._lock:
            taken = self._taken.pop(id(report), None)
            if taken is not None:
                self._base = taken

    def _config_state(self) -> dict[str, Any]:
        lifecycle = self._proxy.lifecycle
        if lifecycle is None:
            return {"version": None, "hash": None, "fleet_version": None}
        status = lifecycle.status()
        version = status["version"]
        return {
            "version": version,
            "hash": status["hash"],
            "fleet_version": self._fleet_version(lifecycle, version),
        }

    def _fleet_version(self, lifecycle: Any, version: Optional[int]) -> Optional[int]:
        """The fleet version a history version is: pushed as it, or a rollback (the proxy's own
        verification's, say) to one that was."""
        if version is None:
            return None
        with self._lock:
            if version in self._fleet_of:
                return self._fleet_of[version]
        entries = {e["version"]: e for e in lifecycle.history()}
        seen, at = set(), version
        while at not in self._fleet_of and at in entries and at not in seen:
            seen.add(at)
            at = entries[at].get("rollback_of")
        with self._lock:
            found = self._fleet_of.get(at) if at is not None else None
            # A push applied meanwhile has set it already, and is right.
            return self._fleet_of.setdefault(version, found)

    # -- pushed configs

    def on_config(self, resource: ConfigWire) -> None:
        self._pushes.put(resource)

    def on_upgrade(self, resource: UpgradeWire) -> None:
        self._pushes.put(resource)

    def _apply_pushes(self) -> None:
        while True:
            resource = self._pushes.get()
            if resource is None:
                return
            if resource["type"] == "upgrade":
                self._acted_on_upgrade(resource)
                continue
            try:
                result = self._apply(resource)
            except Exception as e:  # noqa: BLE001 - said in the report; the next push is still taken
                result = {"result": "refused", "error": f"{type(e).__name__}: {e}"}
            with self._lock:
                self._push = {
                    "resource": resource["version"],
                    "config_version": resource["config_version"],
                    **result,
                }
            if self.on_applied is not None:
                self.on_applied()

    def _apply(self, resource: ConfigWire) -> dict[str, Any]:
        fleet_version = resource["config_version"]
        lifecycle = self._proxy.lifecycle
        if lifecycle is None:
            error = (
                "this proxy keeps no config lifecycle (start it with `meshcore run` to take pushed configs)"
            )
            _log(f"config pushed by the control plane refused: {error}")
            return {"result": "refused", "error": error}
        if resource["rollback_to"] is not None:
            outcome = lifecycle.rollback(resource["rollback_to"], who="control plane", reason="fleet-rollout")
        else:
            if resource["text"] is None:
                return {"result": "refused", "error": "a config resource with neither text nor rollback_to"}
            who = f"control plane, fleet v{fleet_version}"
            outcome = lifecycle.reload(
                source="control", who=who, text=resource["text"], fmt=resource["format"]
            )
        if outcome.version is not None and outcome.result in ("applied", "unchanged"):
            with self._lock:
                self._fleet_of[outcome.version] = fleet_version
        return {"result": outcome.result, "error": outcome.error, "local_version": outcome.version}

    # -- pushed upgrades

    def _cannot_upgrade(self) -> Optional[str]:
        """Why this proxy cannot replace its process; None if it can."""
        if getattr(self._proxy, "upgrader", None) is None:
            return (
                "this proxy cannot replace its process: it was not started by `meshcore run` with a "
                "config file and a writable state dir (where its upgrade socket lives)"
            )
        return None

    def _acted_on_upgrade(self, resource: UpgradeWire) -> None:
        try:
            result = self._upgrade_to(list(resource["command"]))
        except Exception as e:  # noqa: BLE001 - said in the report; the next push is still taken
            result = {"result": "refused", "error": f"{type(e).__name__}: {e}"}
        with self._lock:
            self._upgrade = {"resource": resource["version"], "pid": None, "error": None, **result}
        if self.on_applied is not None:
            self.on_applied()

    def _upgrade_to(self, command: list[str]) -> dict[str, Any]:
        if command == list(self._info.get("command") or ()):
            return {"result": "unchanged"}
        reason = self._cannot_upgrade()
        if reason is not None:
            _log(f"upgrade pushed by the control plane refused: {reason}")
            return {"result": "refused", "error": reason}
        _log(f"the control plane asks for meshcore {' '.join(command)}: starting it to take over")
        status, answer = self._proxy.upgrader.upgrade(command)
        if status == 200:
            return {"result": "applied", "pid": answer.get("pid")}
        error = str(answer.get("error", answer))
        _log(f"upgrade to {' '.join(command)} failed: {error}; still serving")
        return {"result": "refused", "error": error}
