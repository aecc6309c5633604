"""POST /upgrade: the running proxy starts the process that replaces it (`COMMAND run CONFIG
--upgrade`), detached, and answers once that one is ready or has failed.

The command may name another installed version (`/opt/meshcore-2/bin/meshcore`): that is how the
data plane is upgraded, and how it is rolled back. By default it is this interpreter's meshcore.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..process import successor_env
from .upgrade import READY_TIMEOUT, UpgradeServer

LOG_NAME = "upgrade.log"
LOG_TAIL_LINES = 5  # of the new process's output, to say why it failed
ANSWER_SLACK = 10.0  # past the new process's ready deadline, for it to exit and say why


class Upgrader:
    """Starts a new meshcore on `config_path` that takes over from this one through `server`.
    Its output is appended to `<state_dir>/upgrade.log`."""

    def __init__(
        self,
        server: UpgradeServer,
        config_path: str,
        state_dir: Path,
        grace: float,
        running_version: Callable[[], Optional[int]] = lambda: None,
        proxy_id: Optional[str] = None,
    ) -> None:
        """`proxy_id`, the proxy's id at the control plane, is handed to the new process, so that
        the fleet table follows the proxy across the upgrade (meshcore.process)."""
        self._server = server
        # The new process starts with the version this one runs, not the file: a config applied
        # by PUT /config or a rollback is not in the file, and an upgrade must not undo it.
        self._running_version = running_version
        self._config_path = os.path.abspath(config_path)
        self.log_path = Path(state_dir) / LOG_NAME
        self._grace = grace
        self._proxy_id = proxy_id
        self._one = threading.Lock()

    def upgrade(self, command: Optional[list[str]] = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 {"pid"} once the new process is ready (this one then drains
        and exits), 409 if an upgrade is already under way, 500 {"error"} if it failed."""
        if not self._one.acquire(blocking=False):
            return 409, {"error": "another upgrade is in progress"}
        try:
            return self._upgrade(command or [sys.executable, "-m", "meshcore"])
        finally:
            self._one.release()

    def _upgrade(self, command: list[str]) -> tuple[int, dict[str, Any]]:
        argv = [*command, "run", self._config_path, "--upgrade", "--grace", str(self._grace)]
        version = self._running_version()
        if version is not None:
            argv += ["--config-version", str(version)]
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(argv)}\n".encode())
            log.flush()
            start = log.tell()
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=successor_env(self._proxy_id, command),
                )
            except OSError as e:
                return 500, {"error": f"cannot start {command[0]}: {e.strerror or e}"}

        def reap() -> None:
            process.wait()
            self._server.notify()

        threading.Thread(target=reap, name="meshcore-upgrade-reap", daemon=True).start()
        exited = lambda: process.poll() is not None  # noqa: E731
        outcome = self._server.wait_for(process.pid, READY_TIMEOUT + ANSWER_SLACK, or_until=exited)
        if outcome is not None and outcome.ready:
            return 200, {"pid": process.pid}
        try:
            code: Optional[int] = process.wait(ANSWER_SLACK)
        except subprocess.TimeoutExpired:
            code = None  # the old side gave up on it: it exits once it sees the hang-up
        if outcome is None and code is None:
            return 500, {"error": f"the new process {process.pid} was not ready in time; see {self.log_path}"}
        said = self._output_since(start)
        why = outcome.reason if outcome is not None else f"the new process exited with {code}"
        return 500, {"error": f"{why}: {said}" if said else why, "pid": process.pid, "exit_code": code}

    def _output_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-LOG_TAIL_LINES:])
