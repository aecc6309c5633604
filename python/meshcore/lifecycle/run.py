"""How `meshcore run` starts a proxy that can be replaced by a new process: fresh, serving
`<state_dir>/upgrade.sock` for its successor; or with `--upgrade`, on the sockets of the process
it replaces, which drains and exits once this one is ready."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from ..config import Config, load, loads
from ..errors import ConfigError, MeshcoreError
from ..proxy import Proxy
from .history import History
from .spawn import Upgrader
from .state import state_dir_of
from .upgrade import SOCKET_NAME, UpgradeServer, inherit


def start_upgradable(
    proxy: Proxy, config_path: str, *, upgrade: bool, grace: float, on_handover: Callable[[], None]
) -> Optional[UpgradeServer]:
    """Starts `proxy` and prints where it listens; returns the server of its upgrade socket (None
    if there is no state dir to put it in). With `upgrade`, returns only once the old process has
    agreed to drain; any failure before then raises, and the old process keeps serving."""
    state_dir = state_dir_of(proxy.settings)
    path = state_dir / SOCKET_NAME if state_dir is not None else None
    if upgrade:
        if path is None:
            raise MeshcoreError("--upgrade needs a config file or a state_dir to find the running process")
        handover = inherit(path)
        try:
            proxy.start(inherited=handover.sockets_for(proxy.settings))
        except BaseException as e:
            handover.fail(f"{type(e).__name__}: {e}")
            raise
        _announce(proxy)
        try:
            handover.ready()
        except MeshcoreError:
            proxy.stop(grace)  # the old one still serves every socket
            raise
        # (Its fleet reports begin once `meshcore run` has its lifecycle: Proxy.begin_fleet_reports.)
        server = _upgrade_server(proxy, path, on_handover, replace=True)
    else:
        # Bound before the listeners: a second proxy on the same state dir is refused as such,
        # rather than by a port in use.
        server = _upgrade_server(proxy, path, on_handover, replace=False) if path is not None else None
        try:
            proxy.start()
        except BaseException:
            if server is not None:
                server.close()
            raise
        _announce(proxy)
    if server is not None and state_dir is not None:
        server.start()
        proxy.upgrader = Upgrader(
            server, config_path, state_dir, grace, lambda: _running_version(proxy), proxy_id=proxy.fleet_id
        )
    return server


def _running_version(proxy: Proxy) -> Optional[int]:
    lifecycle = getattr(proxy, "lifecycle", None)  # set by `meshcore run` once serving
    return lifecycle.status()["version"] if lifecycle is not None else None


def version_config(config_path: str, version: int) -> Config:
    """Version `version` of the history kept for the config at `config_path`, read as that
    file would be (its relative paths, its state dir): what `--config-version` starts with."""
    path = Path(config_path)
    state_dir = state_dir_of(load(config_path))
    found = History(state_dir).get(version) if state_dir is not None else None
    if found is None:
        raise ConfigError(f"{config_path}: no version {version} in the history in {state_dir}")
    return loads(found.text, found.format, name=config_path, base_dir=path.parent)


def _upgrade_server(
    proxy: Proxy, path: Path, on_handover: Callable[[], None], *, replace: bool
) -> Optional[UpgradeServer]:
    try:
        return UpgradeServer(proxy, path, on_handover, replace=replace)
    except OSError as e:
        # A read-only config directory, say: the proxy serves, but cannot hand over its sockets.
        print(
            f"meshcore: upgrades unavailable: cannot serve {path}: {e.strerror or e}; "
            "set state_dir to a writable directory to allow `meshcore run --upgrade`",
            file=sys.stderr,
            flush=True,
        )
        return None


def _announce(proxy: Proxy) -> None:
    for name, (host, port) in proxy.addresses.items():
        print(f"meshcore: listener {name} on {host}:{port}", flush=True)
    if proxy.admin_address:
        host, port = proxy.admin_address
        print(f"meshcore: admin on http://{host}:{port}", flush=True)
