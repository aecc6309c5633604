"""Zero-downtime upgrade of the process (#17): `meshcore run CONFIG --upgrade` and `meshcore upgrade
--admin` start a new process that takes over every listening socket of the running one, the admin
API's included; the old one drains and exits. Real processes, a real upstream, and clients sending
requests without a pause over keep-alive HTTP/1.1 and HTTP/2 all along: none may fail."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import httpx

from conftest import OutputLines, one_service, wait_until
from meshcore import bench
from meshcore.backend import Backend

MESHCORE = [sys.executable, "-m", "meshcore"]


class Run:
    """A `meshcore run` process, its output read as it comes."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*MESHCORE, "run", str(config), "--grace", "5", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = OutputLines(self.proc.stdout), OutputLines(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> Run:
        self.out.wait_for(r"^meshcore: ready", timeout=60)
        return self

    def listener(self) -> str:
        return re.search(r"listener outbound on (\S+)", self.out.wait_for("listener outbound on")).group(1)

    def admin(self) -> str:
        return re.search(r"admin on (\S+)", self.out.wait_for("admin on")).group(1)

    def exit_code(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """A client sending GETs back to back until stopped, every answer counted.

    `Load` is httpx over one keep-alive HTTP/1.1 connection at a time. A request on a reused
    connection that the server closed before answering it (its last response had not said "close"
    yet) is sent again once, as RFC 9112 9.3.1 lets a client do for an idempotent request, and
    listed in `unsent`. Anything else that is not a 200 is a failure. (HTTP/2 is left to meshcore's
    own load generator: python-h2 takes a GOAWAY for the end of the connection and fails on the
    frames RFC 9113 6.8 allows after it, python-hyper/h2#1199.)"""

    http2 = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.unsent: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = self._get(client)
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text.strip()}")

    def _get(self, client: httpx.Client) -> httpx.Response:
        try:
            return client.get(self.url)
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            self.unsent.append(f"{type(e).__name__}: {e}")
        return client.get(self.url)

    def answered_more(self, count: int, what: str) -> None:
        """Waits until `count` more requests have been answered."""
        target = self.ok + count
        wait_until(lambda: self.ok >= target or bool(self.failures), 30, f"{count} more answers {what}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the client hung"

    def abandon(self) -> None:
        """Stops it without judging it (cleanup after a failed test)."""
        self._stop.set()


class LoadgenBursts(Load):
    """meshcore's own load generator (hyper) in back-to-back one-second runs, 2 keep-alive
    connections each (4 streams each over HTTP/2), until stopped.

    It counts a request hyper would not send as an error: "connection" when the connection was
    closed (after a "Connection: close" or a GOAWAY) before the request left, "http" when the
    stream was refused by the GOAWAY. Those are listed in `unsent`; that they were never processed
    is checked against the upstream's count (`stop_and_count`)."""

    NOT_SENT = ("connection", "http")

    def __init__(self, url: str, *, http2: bool) -> None:
        self.http2 = http2
        super().__init__(url)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = bench.run(self.url, duration=1.0, connections=2, http2=self.http2, streams=4, rate=400)
            self.ok += r.statuses.get(200, 0)
            for error, count in r.errors.items():
                (self.unsent if error in self.NOT_SENT else self.failures).append(f"{error}: {count}")
            self.failures += [f"status {k}: {v}" for k, v in r.statuses.items() if k != 200]


def write_config(path: Path, backend_addr: str, **extra: Any) -> Path:
    config = one_service([backend_addr], admin=True)
    config.update(extra)
    path.write_text(json.dumps(config))  # JSON is valid YAML
    return path


def under_load(listen: str) -> list[Load]:
    url = f"http://{listen}/x"
    loads = [Load(url), LoadgenBursts(url, http2=True), LoadgenBursts(url, http2=False)]
    for load in loads:
        load.answered_more(20, "before the upgrade")
    return loads


def stop_and_count(loads: list[Load], upstream: Backend) -> None:
    """Every request answered: no failure, and the upstream saw exactly the requests answered,
    so none of those sent again had been processed (none lost, none doubled)."""
    for load in loads:
        load.stop()
    for load in loads:
        kind = f"{type(load).__name__} over HTTP/{'2' if load.http2 else '1.1'}"
        assert load.failures == [], f"{kind}: {len(load.failures)} failed of {load.ok}: {load.failures[:5]}"
        assert load.ok > 0
        print(f"{kind}: {load.ok} answered; not sent on a closing connection: {load.unsent or 'none'}")
    assert upstream.requests == sum(load.ok for load in loads)


def gone(pid: int) -> bool:
    """Whether a process that is not our child has exited (a zombie counts: it serves nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_upgrade_under_load_loses_nothing_and_keeps_the_admin_port(tmp_path, backend):
    web = backend("web")
    config = write_config(tmp_path / "mesh.json.yaml", web.addr)
    old = Run(config).ready()
    new: Optional[Run] = None
    listen, admin = old.listener(), old.admin()
    loads = under_load(listen)
    try:
        new = Run(config, "--upgrade").ready()
        assert new.listener() == listen and new.admin() == admin
        assert f"taking over from process {old.pid}" in new.out.wait_for("taking over from")
        assert "inherited outbound, the admin API; bound fresh nothing" in new.out.wait_for("inherited")
        assert old.exit_code() == 0
        assert f"upgrade: process {new.pid} took over" in old.out.text()
        assert "meshcore: stopped" in old.out.text()
        for load in loads:
            load.answered_more(50, "after the old process exited")
    except BaseException:
        for load in loads:
            load.abandon()
        raise
    finally:
        old.stop()
    try:
        stop_and_count(loads, web)
        assert httpx.get(f"{admin}/ready").status_code == 200  # the same admin port, the new process
        assert httpx.get(f"http://{listen}/y").headers["x-backend"] == "web"
        assert new.proc.poll() is None
        # The new process can be upgraded in its turn: it serves the upgrade socket now.
        sock = tmp_path / "mesh.json.state" / "upgrade.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    finally:
        new.stop()
    assert new.proc.returncode == 0


def test_a_new_process_that_fails_before_ready_leaves_the_old_serving(tmp_path, backend):
    web = backend("web")
    config = write_config(tmp_path / "mesh.json.yaml", web.addr)
    good = config.read_text()
    old = Run(config).ready()
    listen = old.listener()
    loads = under_load(listen)
    busy = socket.socket()
    try:
        # A config that does not validate: refused before the running process is asked anything.
        config.write_text(good.replace('"web"', '"nowhere"', 1))
        bad = subprocess.run([*MESHCORE, "run", str(config), "--upgrade"], capture_output=True, text=True)
        assert bad.returncode == 1
        assert "ConfigError" in bad.stderr and str(config) in bad.stderr
        # A config that validates but cannot start: the sockets are handed over, then a new
        # listener's port is in use. The new process says why and exits; the old one serves on.
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        extra = {"name": "extra", "bind": f"127.0.0.1:{busy.getsockname()[1]}", "protocol": "auto"}
        cfg = json.loads(good)
        cfg["listeners"].append(extra)
        cfg["routes"].append({**cfg["routes"][0], "listener": "extra"})
        config.write_text(json.dumps(cfg))
        failed = subprocess.run(
            [*MESHCORE, "run", str(config), "--upgrade"], capture_output=True, text=True, timeout=60
        )
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "BindError" in failed.stderr and "extra" in failed.stderr
        assert f"taking over from process {old.pid}" in failed.stdout
        assert "meshcore: ready" not in failed.stdout
        logged = old.err.wait_for("upgrade failed")
        assert "BindError" in logged and logged.rstrip().endswith("still serving")
        assert old.proc.poll() is None
        for load in loads:
            load.answered_more(50, "after the failed upgrade")
        # Still upgradable after a failure.
        config.write_text(good)
        new = Run(config, "--upgrade").ready()
        try:
            assert old.exit_code() == 0
            for load in loads:
                load.answered_more(50, "after the upgrade")
            stop_and_count(loads, web)
        finally:
            new.stop()
    finally:
        for load in loads:
            load.abandon()
        busy.close()
        old.stop()


def test_meshcore_upgrade_then_back_to_the_first_command_loses_nothing(tmp_path, backend):
    web = backend("web")
    config = write_config(tmp_path / "mesh.json.yaml", web.addr)
    # Another installed meshcore, as far as the running one can tell: a command of its own.
    other = tmp_path / "other-venv" / "bin" / "meshcore"
    other.parent.mkdir(parents=True)
    other.write_text(f'#!/bin/sh\nexec {sys.executable} -m meshcore "$@"\n')
    other.chmod(0o755)
    old = Run(config).ready()
    listen, admin = old.listener(), old.admin()
    pids: list[int] = []
    loads = under_load(listen)
    try:
        up = subprocess.run(
            [*MESHCORE, "upgrade", "--admin", admin, "--meshcore", str(other)],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        pids.append(int(re.search(r"process (\d+) serves", up.stdout).group(1)))
        assert old.exit_code() == 0
        for load in loads:
            load.answered_more(50, "after the upgrade")
        # And back: the first command again, asked of the new process on the same admin port.
        back = subprocess.run(
            [*MESHCORE, "upgrade", "--admin", admin], capture_output=True, text=True, timeout=150
        )
        assert back.returncode == 0, back.stdout + back.stderr
        pids.append(int(re.search(r"process (\d+) serves", back.stdout).group(1)))
        wait_until(lambda: gone(pids[0]), 30, f"the upgraded process {pids[0]} to exit")
        for load in loads:
            load.answered_more(50, "after the second upgrade")
        stop_and_count(loads, web)
        assert httpx.get(f"{admin}/ready").status_code == 200
        log = (tmp_path / "mesh.json.state" / "upgrade.log").read_text()
        assert str(other) in log and f"taking over from process {old.pid}" in log
        assert f"taking over from process {pids[0]}" in log
    finally:
        for load in loads:
            load.abandon()
        old.stop()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda pid=pid: gone(pid), 30, f"process {pid} to stop")


def test_a_failed_upgrade_by_the_admin_api_says_why(tmp_path, backend):
    config = write_config(tmp_path / "mesh.json.yaml", backend("web").addr)
    old = Run(config).ready()
    try:
        broken = tmp_path / "broken" / "meshcore"
        broken.parent.mkdir()
        broken.write_text("#!/bin/sh\necho 'meshcore: this build is broken' >&2\nexit 3\n")
        broken.chmod(0o755)
        r = subprocess.run(
            [*MESHCORE, "upgrade", "--admin", old.admin(), "--meshcore", str(broken)],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert r.returncode == 1
        assert "exited with 3" in r.stderr and "this build is broken" in r.stderr
        missing = subprocess.run(
            [*MESHCORE, "upgrade", "--admin", old.admin(), "--meshcore", str(tmp_path / "nothing")],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert missing.returncode == 1 and "cannot start" in missing.stderr
        assert old.proc.poll() is None
        assert httpx.get(f"http://{old.listener()}/").status_code == 200
    finally:
        old.stop()
    assert old.proc.returncode == 0


def test_upgrade_with_nothing_running_fails_with_the_reason(tmp_path, backend):
    config = write_config(tmp_path / "mesh.json.yaml", backend("web").addr)
    r = subprocess.run(
        [*MESHCORE, "run", str(config), "--upgrade"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "no running meshcore to take over from" in r.stderr
    assert str(tmp_path / "mesh.json.state" / "upgrade.sock") in r.stderr
    # A socket file left by a process that was killed: nobody answers on it.
    (tmp_path / "mesh.json.state").mkdir(exist_ok=True)  # the history may have made it
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "mesh.json.state" / "upgrade.sock"))
    stale.close()
    r = subprocess.run(
        [*MESHCORE, "run", str(config), "--upgrade"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "cannot take over from the running meshcore" in r.stderr and "refused" in r.stderr.lower()


def test_a_second_proxy_on_the_same_state_dir_is_refused(tmp_path, backend):
    config = write_config(tmp_path / "mesh.json.yaml", backend("web").addr)
    first = Run(config).ready()
    try:
        second = subprocess.run([*MESHCORE, "run", str(config)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another meshcore is running with the state dir" in second.stderr
        assert str(tmp_path / "mesh.json.state") in second.stderr
        assert "--upgrade" in second.stderr
        assert first.proc.poll() is None
    finally:
        first.stop()
    # It removes its socket on the way out.
    assert first.proc.returncode == 0
    assert not (tmp_path / "mesh.json.state" / "upgrade.sock").exists()


def test_a_stale_upgrade_socket_is_replaced_and_made_private(tmp_path, backend):
    config = write_config(tmp_path / "mesh.json.yaml", backend("web").addr)
    state = tmp_path / "mesh.json.state"
    state.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state / "upgrade.sock"))  # left behind by a process that was killed
    stale.close()
    os.chmod(state / "upgrade.sock", 0o666)
    run = Run(config).ready()
    try:
        mode = stat.S_IMODE((state / "upgrade.sock").stat().st_mode)
        assert mode == 0o600
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(state / "upgrade.sock"))  # answered: it is the running proxy's now
        probe.close()
    finally:
        run.stop()
    assert run.proc.returncode == 0


def test_upgrade_by_the_admin_api_needs_meshcore_run_and_a_well_formed_body(backend, proxy):
    p = proxy(one_service([backend().addr], admin=True))
    host, port = p.admin_address
    url = f"http://{host}:{port}/upgrade"
    r = httpx.post(url)
    assert r.status_code == 409
    assert "not started by `meshcore run`" in r.json()["error"]
    assert httpx.post(url, content=b'{"command": "meshcore"}').status_code == 400
    assert httpx.post(url, content=b'{"command": [""]}').status_code == 400
    assert httpx.post(url, content=b"[1]").status_code == 400
    assert p.running


def test_meshcore_upgrade_without_an_admin_api_says_so(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = subprocess.run([*MESHCORE, "upgrade", "--admin", f"127.0.0.1:{port}"], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"cannot reach the admin API at http://127.0.0.1:{port}" in r.stderr


def test_one_upgrade_at_a_time_and_a_peer_that_hangs_up_changes_nothing(tmp_path, backend):
    config = write_config(tmp_path / "mesh.json.yaml", backend("web").addr)
    old = Run(config).ready()
    listen = old.listener()
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A new process of our own making: it says hello and receives the sockets, then stalls.
        peer.connect(str(tmp_path / "mesh.json.state" / "upgrade.sock"))
        peer.sendall(json.dumps({"protocol": 1, "pid": os.getpid(), "version": "test"}).encode() + b"\n")
        line, fds, _flags, _addr = socket.recv_fds(peer, 64 * 1024, 16)
        meta = json.loads(line)
        assert meta["protocol"] == 1 and meta["pid"] == old.pid
        assert meta["fds"] == len(fds) == len(meta["sockets"])
        # One socket per worker for the listener, and the admin API's.
        assert {(s["kind"], s["name"]) for s in meta["sockets"]} == {
            ("admin", "admin"),
            ("listener", "outbound"),
        }
        for fd in fds:
            os.close(fd)
        second = subprocess.run(
            [*MESHCORE, "run", str(config), "--upgrade"], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "another upgrade is in progress" in second.stderr
        peer.close()  # before "ready": the old one keeps serving
        logged = old.err.wait_for("upgrade failed")
        assert f"process ({os.getpid()}, meshcore test) hung up before it was ready" in logged
        assert httpx.get(f"http://{listen}/").status_code == 200
        assert old.proc.poll() is None
    finally:
        peer.close()
        old.stop()
    assert old.proc.returncode == 0
