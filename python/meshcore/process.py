"""Who this process is to the control plane's fleet table: its proxy id, the meshcore command that
started it, and when it started.

A proxy's id is `HOST/PID` unless `MESHCORE_PROXY_ID` names it. A process that replaces another
(`meshcore upgrade`, a version rollout: lifecycle.spawn) is started with the old one's id in
`MESHCORE_PROXY_ID` and with the command it was started by in `MESHCORE_COMMAND`, so the fleet
table follows the proxy across the hand-over, and a rollout can send it back to the command it ran
before. Of two processes reporting under one id (the old draining, the new serving), the one that
started later speaks for it (`STARTED_AT`).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import time
from typing import Optional

__all__ = ["COMMAND_ENV", "PROXY_ID_ENV", "STARTED_AT", "meshcore_command", "new_proxy_id", "successor_env"]

PROXY_ID_ENV = "MESHCORE_PROXY_ID"
COMMAND_ENV = "MESHCORE_COMMAND"
STARTED_AT = time.time()

_proxies_made = itertools.count(1)  # tells apart the proxies of one process to the control plane


def new_proxy_id() -> str:
    n = next(_proxies_made)
    base = os.environ.get(PROXY_ID_ENV) or f"{socket.gethostname()}/{os.getpid()}"
    return base + (f"-{n}" if n > 1 else "")


def meshcore_command() -> list[str]:
    """The command that starts this meshcore again: the one named in `MESHCORE_COMMAND` (set by
    the process this one replaced), else the script this process runs (a virtualenv's
    `bin/meshcore`), else this interpreter's `-m meshcore`."""
    given = os.environ.get(COMMAND_ENV)
    if given:
        try:
            command = json.loads(given)
        except ValueError:
            command = None
        if isinstance(command, list) and command and all(isinstance(a, str) and a for a in command):
            return command
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.basename(script) != "__main__.py" and os.path.isfile(script):
        return [os.path.abspath(script)]
    return [sys.executable, "-m", "meshcore"]


def successor_env(proxy_id: Optional[str], command: list[str]) -> dict[str, str]:
    """The environment of the process that replaces this one, started by `command`."""
    env = dict(os.environ)
    env[COMMAND_ENV] = json.dumps(command)
    if proxy_id is not None:
        env[PROXY_ID_ENV] = proxy_id
    return env
