"""`Proxy`: the Python handle on one running data plane."""

from __future__ import annotations

import gc
import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from . import _core, snapshot
from .config import Config, load, parse_duration, restart_needed
from .errors import ConfigError, config_error
from .identity.agent import IdentityAgent
from .kept_config import KeptConfig
from .memory import MemoryTrimmer
from .plugins import PluginHost, PluginSpec
from .process import new_proxy_id

__all__ = ["InheritedSockets", "Proxy", "check"]

Source = Union[str, Path, dict[str, Any], Config]


@dataclass
class InheritedSockets:
    """Listening sockets handed over by the process this one replaces (meshcore.lifecycle.upgrade):
    `sockets` is the core's `_core.Inherited`, `assignment` maps a listener's name to the indexes of
    the sockets it serves on instead of binding, `admin` is the admin API's socket, if inherited."""

    sockets: Any
    assignment: dict[str, list[int]]
    admin: Optional[socket.socket] = None


def _plugin_host(config: Config) -> Optional[PluginHost]:
    """Loads the config's plugins (running their module code), as start needs them."""
    if not config.plugins:
        return None
    base = Path(config._base_dir) if config._base_dir else None
    specs = [
        PluginSpec(
            path=p.path,
            module=p.module,
            name=p.name,
            routes=p.routes,
            on_error=p.on_error,
            timeout=parse_duration(p.timeout) / 1000,
            origin=f"{config._source or '<config>'}: plugins[{i}].{'path' if p.path else 'module'}",
        )
        for i, p in enumerate(config.plugins)
    ]
    return PluginHost(specs, base)


def _core_document(config: Config, plugins: Optional[PluginHost]) -> snapshot.Snapshot:
    """The complete document for the core (every field sent: the core has no defaults), each
    route marked if plugins apply to it."""
    return config.to_core(plugins.routes_with_plugins(config.route_names()) if plugins else ())


def _prepare(source: Source) -> tuple[Config, Optional[PluginHost], snapshot.Snapshot]:
    """Every check that `Proxy()` makes before it binds anything: the config itself, the files
    it names, and its plugins, loaded. `meshcore check` runs this same function, so whatever
    check accepts, run starts (short of a port in use or the identity service)."""
    config = load(source)
    problems = config.check_files()
    if problems:
        raise config_error(problems, config._source)
    plugins = _plugin_host(config)
    return config, plugins, _core_document(config, plugins)


def check(source: Source) -> Config:
    """Validates a config as `Proxy(source).start()` would, without binding ports or asking
    the identity service for a certificate. Raises ConfigError or PluginError."""
    _config, _plugins, document = _prepare(source)
    # A guard, not a second validator: Python has refused whatever the core would.
    _core.ProxyCore(json.dumps(document))
    return _config


class Proxy:
    """A running meshcore proxy.

    `start()` returns once every listener is bound; the data plane then runs on
    its own Rust threads and never needs the GIL. Use it as a context manager to
    stop (and drain) on exit.
    """

    def __init__(self, config: Source):
        valid, self._plugins, document = _prepare(config)
        # Not the validated models themselves: at 10,000 services they weigh 30 MB.
        self._kept = KeptConfig(valid)
        self._identity: Optional[IdentityAgent] = None
        if valid.identity is not None:
            self._identity = IdentityAgent(valid)
            cert, key = self._identity.initial()
            document["identity"] = {
                "trust_anchors_pem": self._identity.trust_anchors_pem,
                "cert_pem": cert,
                "key_pem": key,
                "trust_domains": valid.identity.trust_domains,
            }
        self._identity_document = document.get("identity")
        self._core = _core.ProxyCore(json.dumps(document))
        del document
        self._admin: Any = None
        self._lock = threading.Lock()
        # Serialises the changes that rebuild the core's table (reload, discovered endpoints,
        # plugins added), so that none overwrites another.
        self._changes = threading.RLock()
        self._discovered: dict[str, list[snapshot.Endpoint]] = {}
        self._follower: Any = None
        self.fleet_id: Optional[str] = None  # its id at the control plane (meshcore.process)
        if valid.discovery is not None:
            from .control.follower import Follower  # grpc is loaded only for a proxy that needs it

            self.fleet_id = new_proxy_id()
            self._follower = Follower(valid, self.fleet_id, self._set_discovered, self._identity, proxy=self)
        self._memory: Optional[MemoryTrimmer] = None
        self._stopped = threading.Event()
        # The meshcore.lifecycle.Lifecycle that applies config changes, set by whoever runs one
        # (`meshcore run`); the admin API's /config routes reach it here.
        self.lifecycle: Any = None
        # Set by whoever can start a process to replace this one (`meshcore run`), for POST /upgrade.
        self.upgrader: Any = None

    def _core_document(self, config: Config) -> snapshot.Snapshot:
        """The core's document for `config`, with the endpoints discovered so far filled in for
        the services the config lists without any."""
        document = _core_document(config, self._plugins)
        for service in document["services"]:
            if not service["endpoints"]:
                service["endpoints"] = list(self._discovered.get(service["name"], []))
        return document

    def update_endpoints(self, service: str, endpoints: Optional[list[dict[str, Any]]]) -> None:
        """Sets the endpoints of `service`, one the config lists without endpoints (they come from
        discovery), without dropping a request: endpoints that stay keep their balancer state and
        connections. Each endpoint is a dict as in the config (`addr`, `zone`, `cluster`,
        `identity`); None or [] leaves the service with none (its requests get 503). Raises
        ConfigError for an unknown service, one with endpoints of its own, or a bad endpoint."""
        with self._changes:
            if service not in self._kept.discovered:
                names = [s.name for s in self.config.services]
                if service not in names:
                    choices = ", ".join(names) if names else "none defined"
                    raise ConfigError(f"update_endpoints: unknown service {service!r} (valid: {choices})")
                raise ConfigError(
                    f"update_endpoints: service {service!r} lists its own endpoints in the config"
                )
            self._set_discovered({service: endpoints or []})

    def _set_discovered(self, services: dict[str, list[dict[str, Any]]]) -> None:
        """Checks and keeps the endpoints of each service (any name: a reload may add the service
        later), then hands the core those of the running config's services in one update (the
        routing table is not rebuilt). On an error nothing changes."""
        from .config import Endpoint

        checked: dict[str, list[snapshot.Endpoint]] = {}
        for service, endpoints in services.items():
            checked[service] = []
            for i, raw in enumerate(endpoints):
                try:
                    e = Endpoint.model_validate(raw)
                except ValueError as err:
                    raise ConfigError(f"update_endpoints: {service}: endpoints[{i}]: {err}") from None
                if e.identity is not None and self._kept.settings.identity is None:
                    where = f"update_endpoints: {service}: endpoints[{i}].identity"
                    raise ConfigError(f"{where}: mTLS needs an [identity] section")
                checked[service].append(
                    {"addr": e.addr, "zone": e.zone, "cluster": e.cluster, "identity": e.identity}
                )
        with self._changes:
            previous = dict(self._discovered)
            self._discovered.update(checked)
            try:
                if self.running:
                    # In place: the core swaps only these services, the routing table stays.
                    discovered = self._kept.discovered
                    updates = [[name, eps] for name, eps in checked.items() if name in discovered]
                    if updates:
                        self._core.update_endpoints(json.dumps(updates))
                else:
                    self._rebuild()
            except Exception:
                self._discovered = previous
                raise

    def _rebuild(self) -> None:
        """Hands the core the running config's document again (discovered endpoints, plugin
        marks): swapped in if running, else a new core built for start()."""
        document = self._core_document(self.config)
        if self.running:
            document["identity"] = None  # the running certificate stays
            self._core.reload(json.dumps(document))
        else:
            document["identity"] = self._identity_document
            self._core = _core.ProxyCore(json.dumps(document))

    def discovered_endpoints(self) -> dict[str, list[dict[str, Any]]]:
        """The endpoints set by `update_endpoints`, per service."""
        with self._changes:
            return {name: [dict(e) for e in eps] for name, eps in self._discovered.items()}

    @property
    def settings(self) -> Config:
        """The running config's settings outside its routes and services, cheap to read at any
        time: a Config whose `routes` and `services` are empty (`config` has them)."""
        return self._kept.settings

    @property
    def config(self) -> Config:
        """The running config, whole. A proxy keeps it compact (`meshcore.kept_config`) and builds
        it again when asked, about 0.3 s for 10,000 services: hold on to it rather than asking
        again for each field."""
        return self._kept.config()

    def start(self, inherited: Optional[InheritedSockets] = None) -> Proxy:
        """Binds the listeners (or serves on the `inherited` sockets assigned to them) and starts."""
        with self._lock:
            if inherited is None:
                self._core.start()
            else:
                self._core.start(inherited.sockets, inherited.assignment)
            self._memory = MemoryTrimmer(self._core.connection_peak)
            self._memory.trim()
            self._memory.start()
            if self._identity is not None:
                self._identity.start(self._core.update_identity, self._core.set_trust_anchors)
            if self._plugins is not None:
                self._plugins.start()
                self._core.set_plugin_host(self._plugins)
            if self._follower is not None:
                # On inherited sockets the process it replaces is the proxy until it has agreed
                # to drain: this one follows discovery, but reports and takes pushes only once
                # begin_fleet_reports() says it serves.
                self._follower.start(hold=inherited is not None)
            admin = self._kept.settings.admin
            if admin:
                from .admin import AdminServer

                try:
                    admin_socket = inherited.admin if inherited is not None else None
                    self._admin = AdminServer(self, admin, sock=admin_socket)
                except Exception:
                    if self._follower is not None:
                        self._follower.stop()
                    self._memory.stop()
                    self._core.stop(0.0)
                    raise
        return self

    def trim_memory(self) -> bool:
        """Collects cyclic garbage, then gives the allocator's free pages back to the system
        (glibc's malloc_trim; start and reload trim without collecting). For whoever has built
        and dropped large things since (`meshcore run`'s lifecycle validates and hashes the
        config again): the interpreter returns an arena (1 MiB) only once it is empty, and a
        few dozen objects in a cycle (json's encoder, with `indent`) kept 5 of them. A full
        collection takes 0.15 s while 10,000 services' models are alive, 0.03 s once they are
        gone. False if not running or not glibc."""
        if self._memory is None:
            return False
        gc.collect()
        return self._memory.trim()

    def begin_fleet_reports(self) -> None:
        """Starts the reports to the control plane and the configs and upgrades it pushes, held
        by a start on inherited sockets (`meshcore run --upgrade`) until this process is the proxy."""
        if self._follower is not None:
            self._follower.release()

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting, drains in-flight requests for up to `grace` seconds, then stops."""
        with self._lock:
            if self._follower is not None:
                self._follower.stop()
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            if self._identity is not None:
                self._identity.stop()
            if self._memory is not None:
                self._memory.stop()
                self._memory = None
            self._core.stop(grace)
            if self._plugins is not None:
                self._plugins.stop()
            self._stopped.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the proxy is stopped (e.g. by the admin API's /shutdown)."""
        return self._stopped.wait(timeout)

    def reload(self, config: Source) -> None:
        """Validates and swaps in new listeners, routes, services, policy and plugins without
        dropping requests: added listeners open, removed ones stop accepting and drain, and the
        sockets of those that stay are untouched. A change only a restart can apply (admin,
        workers, identity) is a ConfigError naming the field; a listener that cannot bind is a
        BindError. On any error the running config stays in place."""
        with self._changes:
            self._reload(load(config))

    def _reload(self, new: Config) -> None:
        running = self._kept.settings
        needs_restart = restart_needed(running, new)
        if needs_restart:
            raise config_error(needs_restart, new._source, headline="cannot reload without a restart")
        host = self._plugins
        if [p.model_dump() for p in new.plugins] != [p.model_dump() for p in running.plugins]:
            host = _plugin_host(new)  # a plugin that fails to load raises; the old ones stay
        previous, self._plugins = self._plugins, host
        try:
            document = self._core_document(new)
            # The running certificate stays; Rust only rebuilds routes and services.
            document["identity"] = None
            self._core.reload(json.dumps(document))
            del document
        except Exception:
            self._plugins = previous  # the new host was never started or handed to Rust
            raise
        if host is not previous:
            if host is not None:
                host.start()
                self._core.set_plugin_host(host)
            if previous is not None:
                previous.stop()
        self._kept = KeptConfig(new)
        if self._memory is not None:
            self._memory.trim()  # the old table and the transient document: pages to give back

    def add_plugin(
        self,
        plugin: Any,
        routes: Optional[list[str]] = None,
        on_error: str = "fail-closed",
        timeout: float = 1.0,
        name: Optional[str] = None,
    ) -> None:
        """Adds a plugin object (its methods are the hooks) to a running or new proxy.
        `routes` names the routes it applies to (all when None); an unknown name is a ConfigError."""
        if isinstance(routes, str):
            raise ConfigError(f"add_plugin: routes must be a list of route names, not the string {routes!r}")
        config = self.config  # held until the rebuild below, which reads it again
        valid = config.route_names()
        for i, route in enumerate(routes or []):
            if route not in valid:
                choices = ", ".join(valid) if valid else "none defined"
                raise ConfigError(f"add_plugin: routes[{i}]: unknown route {route!r} (valid: {choices})")
        spec = PluginSpec(obj=plugin, routes=routes, on_error=on_error, timeout=timeout, name=name)
        if self._plugins is None:
            self._plugins = PluginHost([spec])
            if self.running:
                self._plugins.start()
                self._core.set_plugin_host(self._plugins)
        else:
            self._plugins.add(spec)
        with self._changes:
            self._rebuild()  # the new route marks

    def reload_plugins(self) -> dict[str, str]:
        """Re-imports file and module plugins; returns load errors (the old version stays)."""
        return self._plugins.reload() if self._plugins else {}

    def plugins(self) -> list[dict[str, Any]]:
        return self._plugins.status() if self._plugins else []

    @property
    def running(self) -> bool:
        return self._core.is_running()

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> bound (host, port); port 0 in the config is resolved here."""
        out = {}
        for name, addr in self._core.addresses():
            host, _, port = addr.rpartition(":")
            out[name] = (host.strip("[]"), int(port))
        return out

    def url(self, listener: str, path: str = "/") -> str:
        host, port = self.addresses[listener]
        return f"http://{host}:{port}{path}"

    @property
    def admin_address(self) -> Optional[tuple[str, int]]:
        return self._admin.address if self._admin else None

    @property
    def admin_socket(self) -> Optional[socket.socket]:
        """The admin API's listening socket, handed over on an upgrade."""
        return self._admin.listening_socket if self._admin else None

    def metrics(self) -> str:
        """Prometheus text exposition of the proxy's metrics, its plugins' included."""
        return self._core.metrics(self._plugins.metrics_report() if self._plugins else None)

    def route_stats(self) -> dict[str, Any]:
        """Golden numbers since start per route and per service (responses, failures, cross-zone
        answers, latency buckets) and authorization decisions (see `_core.pyi`)."""
        return json.loads(self._core.route_stats())  # type: ignore[no-any-return]

    def count_lifecycle(self, event: str, label: str) -> None:
        """Counts a reload (label: its result) or a rollback (label: its reason) in /metrics."""
        self._core.count_lifecycle(event, label)

    def endpoints(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self._core.endpoints())
        return found

    def identity(self) -> Optional[dict[str, Any]]:
        """The workload identity, None without one: the certificate in use (`spiffe_id`,
        `not_after` in unix seconds, `chains_to`: the SHA-256 of each trust anchor it leads to)
        and `trust_anchors` (each one's `subject`, `sha256` and `not_after`)."""
        info = self._core.identity_info()
        if info is None:
            return None
        found: dict[str, Any] = json.loads(info)
        return found

    def open_connections(self) -> int:
        return self._core.open_connections()

    def tap(
        self,
        route: Optional[str] = None,
        service: Optional[str] = None,
        authority: Optional[str] = None,
        capacity: int = 1024,
    ) -> _core.Tap:
        """A live feed of the requests answered from now on that match every filter given
        (`_core.Tap`: `next(timeout)` gives JSON lines). It keeps at most `capacity` unread and
        drops the rest, counted, so a slow reader never slows a request. Close it when done:
        requests pay for summaries while any tap is open. MeshcoreError when 16 are open."""
        return self._core.tap(route, service, authority, capacity)

    def __enter__(self) -> Proxy:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<meshcore.Proxy {state} listeners={[lst.name for lst in self._kept.settings.listeners]}>"
