"""A control plane (`meshcore control serve`) as a process, and the documents it serves, for the
tests of the control plane and of the proxies that follow it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from conftest import wait_until

MESHCORE = [sys.executable, "-m", "meshcore"]


def write(path: Path, text: str) -> None:
    """Replaces the file whole (as a deploy tool does), so the watcher never reads half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def service_toml(name: str, *addrs: str, zone: str = "zone-a") -> str:
    endpoints = ", ".join(f'{{ addr = "{a}", zone = "{zone}" }}' for a in addrs)
    return f'[[services]]\nname = "{name}"\nendpoints = [{endpoints}]\n'


class ControlPlane:
    """`meshcore control serve` as a process; its stderr lines kept for the tests to wait on."""

    def __init__(
        self,
        docs: Optional[Path],
        bind: str = "127.0.0.1:0",
        tls: Optional[list[str]] = None,
        extra: Sequence[str] = (),
    ):
        """`docs` None serves no directory; `extra` are more flags (other sources, `--etcd URL`)."""
        source = ["--dir", str(docs)] if docs is not None else []
        self.proc = subprocess.Popen(
            [*MESHCORE, "control", "serve", *source, "--bind", bind, *(tls or []), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        assert self.proc.stdout is not None
        serving = self.proc.stdout.readline()
        match = re.match(r"meshcore-control: serving on (\S+)", serving)
        assert match, f"no serving line: {serving!r}, log: {self.log}"
        self.addr = match.group(1)
        self.serving = serving  # says how it serves (mTLS, as whom, an identity service beside)
        self.ready = self.proc.stdout.readline()
        assert "meshcore-control: ready" in self.ready, f"no ready line: {self.ready!r}, log: {self.log}"

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def logged(self, *parts: str) -> bool:
        """Whether a line said so already (for asserting that something was *not* said)."""
        return any(all(p in line for p in parts) for line in list(self.log))

    def wait_logged(self, *parts: str, timeout: float = 10.0) -> bool:
        """Waits (conftest's `wait_until`) for a line saying so: the log is read on a thread of its
        own, so a line written just before what the test saw may not be in `log` yet."""
        wait_until(lambda: self.logged(*parts), timeout, f"the control plane to log {parts}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
