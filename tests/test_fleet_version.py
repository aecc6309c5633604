"""Version rollouts (#18): `meshcore mesh rollout --meshcore PATH` replaces each proxy's process with
one of another meshcore, in waves, canary first, judged as config rollouts are, and upgrades the
proxies it moved back to the meshcore they ran before when a wave makes things worse.

What "another version" is here: there is one meshcore build on this machine, so each "version" is
an executable script, as a virtualenv's `bin/meshcore` is, that runs this checkout's meshcore with
its reported version marked (`+v2`, `+bad`); the bad one also has a bug planted that sends every
request to an upstream answering 500. Everything else is real: `meshcore run` processes following
a control plane, each replaced through its upgrade socket (the new process takes over the sockets;
the old one drains), the same proxy id across the hand-over, and load on every proxy all along."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import pytest
from control_helpers import MESHCORE, ControlPlane, service_toml, write

from conftest import OutputLines, wait_until
from meshcore import __version__
from meshcore.control.agent import FleetAgent
from meshcore.control.protocol import RequestError
from meshcore.control.rollout import parse_rollout

# How this test's proxies are started: the command they report, and go back to on a rollback.
ORIGINAL = [sys.executable, "-m", "meshcore"]


def proxy_toml(control: str) -> str:
    return (
        f'[discovery]\ncontrol = "{control}"\nreport_interval = "100ms"\n\n'
        '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
        '[[routes]]\nlistener = "outbound"\nbackends = [{ service = "web" }]\n\n'
        '[[services]]\nname = "web"\nendpoints = []\n'
    )


def meshcore_version(path: Path, mark: str, broken_upstream: str = "") -> Path:
    """An executable that runs this checkout's meshcore reporting version `__version__+mark`; with
    `broken_upstream`, a build whose proxy sends every request there instead."""
    lines = [f"#!{sys.executable}", "import sys", "import meshcore", f'meshcore.__version__ += "+{mark}"']
    if broken_upstream:
        lines += [
            "from meshcore.proxy import Proxy",
            "good = Proxy._set_discovered",
            "Proxy._set_discovered = lambda self, services: good(",
            f'    self, {{n: [dict(e, addr="{broken_upstream}") for e in es] for n, es in services.items()}}',
            ")",
        ]
    lines += ["from meshcore.cli import main", "sys.exit(main())"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


class Running:
    """`meshcore run` as a process; its id at the control plane is host/pid, kept by its successors."""

    def __init__(self, path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MESHCORE_COMMAND", "MESHCORE_PROXY_ID")}
        self.proc = subprocess.Popen(
            [*MESHCORE, "run", str(path), "--grace", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out, self.err = OutputLines(self.proc.stdout), OutputLines(self.proc.stderr)
        line = self.out.wait_for("listener outbound on", timeout=60)
        self.listen = re.search(r"listener outbound on (\S+)", line).group(1)
        self.out.wait_for("meshcore: ready", timeout=60)
        self.id = f"{socket.gethostname()}/{self.proc.pid}"
        self.state_dir = path.parent / "mesh.state"


@dataclass
class Load:
    """Requests one after the other to each proxy over keep-alive connections, each answer kept:
    (proxy id, sent, ended, status). A request on a reused connection that a draining process
    closed before reading it is sent again once, as RFC 9112 9.3.1 allows for an idempotent
    request, and counted in `resent`; anything else that is not a 200 is a failure."""

    proxies: list[Running]
    answers: list[tuple[str, float, float, int]] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Load:
        for p in self.proxies:
            threading.Thread(target=self._drive, args=(p,), daemon=True).start()
        return self

    def _drive(self, p: Running) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    try:
                        status = client.get(f"http://{p.listen}/").status_code
                    except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                        self.resent.append(f"{p.id}: {type(e).__name__}: {e}")
                        status = client.get(f"http://{p.listen}/").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((p.id, sent, time.monotonic(), status))

    def failures(self) -> list[tuple[str, float, float, int]]:
        return [a for a in list(self.answers) if a[3] != 200]

    def answered(self, proxy_id: str) -> int:
        return sum(1 for a in list(self.answers) if a[0] == proxy_id)

    def last_status(self, proxy_id: str) -> int:
        return [a for a in list(self.answers) if a[0] == proxy_id][-1][3]

    def first_ok_sent_after(self, proxy_id: str, since: float) -> Optional[float]:
        """When the first request to `proxy_id` sent at or after `since` and answered 200 was sent."""
        return next(
            (a[1] for a in list(self.answers) if a[0] == proxy_id and a[1] >= since and a[3] == 200), None
        )


def mesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCORE, "mesh", *args], capture_output=True, text=True, timeout=180)


class Fleet:
    def __init__(self, tmp_path: Path, backend, size: int) -> None:
        docs = tmp_path / "docs"
        docs.mkdir()
        write(docs / "web.toml", service_toml("web", backend("web").addr))
        self.plane = ControlPlane(docs)
        self.url = f"http://{self.plane.addr}"
        self.proxies: list[Running] = []
        self.pids: set[int] = set()  # every process that served as one of the proxies
        for i in range(size):
            directory = tmp_path / f"proxy-{i}"
            directory.mkdir()
            (directory / "mesh.toml").write_text(proxy_toml(self.url))
            self.proxies.append(Running(directory / "mesh.toml"))
        self.ids = sorted(p.id for p in self.proxies)
        wait_until(self.all_reporting, 30, "every proxy to report")

    def rows(self) -> dict[str, dict]:
        done = mesh("status", "--control", self.url, "--json")
        assert done.returncode == 0, done.stderr
        rows = {row["id"]: row for row in json.loads(done.stdout)["proxies"]}
        self.pids.update(row["pid"] for row in rows.values() if row["pid"])
        return rows

    def all_reporting(self) -> bool:
        rows = self.rows()
        return all(i in rows and rows[i]["subscribed"] and rows[i]["upgrade"]["available"] for i in self.ids)

    def rollout(self, *args: str) -> subprocess.CompletedProcess:
        return mesh("rollout", "--control", self.url, "--bake", "1s", "--min-requests", "5", *args)

    def stop(self) -> None:
        try:
            self.rows()
        except AssertionError:
            pass
        for p in self.proxies:
            self.pids.add(p.proc.pid)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.proxies:
            try:
                p.proc.wait(15)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        for pid in self.pids:
            try:
                wait_until(lambda pid=pid: gone(pid), 15, f"process {pid} to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        self.plane.kill()


@pytest.fixture
def fleet(tmp_path, backend):
    made = Fleet(tmp_path, backend, 3)
    yield made
    made.stop()


def test_another_meshcore_moves_every_proxy_in_waves_losing_no_request(fleet, tmp_path):
    v2 = meshcore_version(tmp_path / "v2" / "bin" / "meshcore", "v2")
    before = fleet.rows()
    assert all(before[i]["command"] == ORIGINAL and before[i]["version"] == __version__ for i in fleet.ids)
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        # A very loose p99 limit: this test is about the waves and the hand-over (the p99 verdict
        # has its own test in test_fleet). A process just started serves its first second on cold
        # connections, and with a 1 s bake two slow answers on a shared machine make its p99.
        done = fleet.rollout("--meshcore", str(v2), "--waves", "1,50%,100%", "--max-p99-ratio", "100")
        moved = len(load.answers)
        wait_until(lambda: len(load.answers) > moved + 30, 30, "answers from the new processes")
    finally:
        load.stop.set()
    assert done.returncode == 0, done.stdout + done.stderr
    target = f"meshcore {v2}"
    waves = re.findall(rf"wave (\d)/3(?: \(canary\))?: (\S+) -> {re.escape(target)}", done.stdout)
    # Proxies ordered by id: the first is the canary, alone, and each moves once, in order.
    assert waves == [("1", fleet.ids[0]), ("2", fleet.ids[1]), ("3", fleet.ids[2])], done.stdout
    assert f"on {target} (version {__version__}+v2; was {__version__})" in done.stdout
    assert done.stdout.count(": ok: ") == 3, done.stdout
    assert f"done: 3 proxies run {target}" in done.stdout
    assert load.failures() == [], load.failures()[:5]

    # Each proxy kept its id across the hand-over: a new process, the new version, its command.
    after = fleet.rows()
    assert sorted(after) == fleet.ids
    for i in fleet.ids:
        row = after[i]
        assert row["subscribed"] and row["version"] == f"{__version__}+v2"
        assert row["command"] == [str(v2)] and row["pid"] != before[i]["pid"]
        assert row["upgrade"]["result"] == "unchanged", "the new process found itself on the target"
    for p in fleet.proxies:
        assert p.proc.wait(30) == 0, "the old process drained and exited"
        p.out.wait_for(r"upgrade: process \d+ took over; draining")
        assert "--upgrade" in (p.state_dir / "upgrade.log").read_text()
    assert fleet.plane.wait_logged(f"rollout {target}: done")


def test_a_bad_meshcore_is_rolled_back_after_the_canary(fleet, tmp_path, upstream):
    broken = upstream(
        lambda head, conn, n: b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
    )
    bad = meshcore_version(tmp_path / "bad" / "bin" / "meshcore", "bad", broken_upstream=broken.addr)
    before = fleet.rows()
    canary = fleet.ids[0]
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        started = time.monotonic()
        done = fleet.rollout("--meshcore", str(bad), "--waves", "1,50%,100%")
        ended = time.monotonic()
        # Back on its old meshcore, the canary answers again: a request sent after the rollout
        # returned (one sent before may be answered by either process).
        wait_until(
            lambda: load.first_ok_sent_after(canary, ended) is not None, 30, "the canary to answer 200 again"
        )
        back = len(load.answers)
        wait_until(lambda: len(load.answers) > back + 30, 30, "more answers after the rollback")
    finally:
        load.stop.set()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"wave 1/3 (canary): {canary} -> meshcore {bad}" in done.stdout
    assert f"version {__version__}+bad; was {__version__}" in done.stdout
    assert "wave 2/3" not in done.stdout, "nothing moved past the canary"
    assert re.search(r"wave 1/3 \(canary\): worse: error rate up", done.stdout), done.stdout
    assert "failed and rolled back: wave 1/3 (canary) made things worse" in done.stdout
    assert "not confirmed back" not in done.stdout and "refused to go back" not in done.stdout

    # Every proxy ends on the meshcore it ran before; the canary in a third process.
    after = fleet.rows()
    for i in fleet.ids:
        assert after[i]["version"] == __version__ and after[i]["command"] == ORIGINAL
    assert after[canary]["pid"] not in (before[canary]["pid"], None)
    assert after[canary]["upgrade"]["result"] == "unchanged"
    assert all(after[i]["pid"] == before[i]["pid"] for i in fleet.ids[1:])

    # Requests failed only at the canary, only while the rollout ran, and as the bad build answers.
    failures = load.failures()
    assert failures, "the bad meshcore failed requests at the canary"
    assert {proxy_id for proxy_id, _, _, _ in failures} == {canary}
    assert all(started < done_at for _, _, done_at, _ in failures)
    # The bad process may answer a request or two on its open connection after the rollout has
    # returned, until it hears it must drain; from the canary's first good answer after that, none fails.
    recovered = load.first_ok_sent_after(canary, ended)
    assert all(sent_at < recovered for _, sent_at, _, _ in failures)
    assert {status for *_, status in failures} == {500}


def test_a_meshcore_that_cannot_start_fails_the_canary_and_nothing_changes(tmp_path, backend):
    fleet = Fleet(tmp_path, backend, 1)
    try:
        broken = tmp_path / "broken" / "bin" / "meshcore"
        broken.parent.mkdir(parents=True)
        broken.write_text("#!/bin/sh\necho 'this meshcore is broken' >&2\nexit 3\n")
        broken.chmod(0o755)
        [p] = fleet.proxies
        load = Load(fleet.proxies).start()
        try:
            wait_until(lambda: load.answered(p.id) >= 20, 30, "load on the proxy")
            done = fleet.rollout("--meshcore", str(broken))
        finally:
            load.stop.set()
        assert done.returncode == 1, done.stdout + done.stderr
        assert re.search(
            rf"failed and rolled back: wave 1/1 \(canary\): {re.escape(p.id)} refused meshcore {broken}: "
            r"the new process exited with 3: .*this meshcore is broken",
            done.stdout,
        ), done.stdout
        assert load.failures() == []
        [row] = fleet.rows().values()
        assert row["pid"] == p.proc.pid and row["command"] == ORIGINAL
        assert row["upgrade"]["result"] == "unchanged", "sent back to what it runs: nothing to do"
        assert p.proc.poll() is None, "the old process serves on"
    finally:
        fleet.stop()


def test_a_proxy_not_under_meshcore_run_refuses_and_the_rollout_fails_fast(tmp_path, backend, proxy):
    from conftest import one_service

    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", backend("web").addr))
    plane = ControlPlane(docs)
    try:
        cfg = one_service([])
        cfg["discovery"] = {"control": f"http://{plane.addr}", "report_interval": "100ms"}
        running = proxy(cfg)

        def rows() -> list[dict]:
            done = mesh("status", "--control", f"http://{plane.addr}", "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)["proxies"]

        wait_until(lambda: any(r["reports"] for r in rows()), 30, "the proxy's first report")
        [row] = rows()
        assert row["id"] == running.fleet_id and not row["upgrade"]["available"]
        assert "not started by `meshcore run`" in row["upgrade"]["reason"]

        done = mesh("rollout", "--control", f"http://{plane.addr}", "--meshcore", sys.executable)
        assert done.returncode == 1
        assert "1 of 1 proxies cannot take another meshcore, nothing moved" in done.stdout
        assert "not started by `meshcore run` with a config file" in done.stdout
        assert "wave" not in done.stdout

        # Pushed anyway (by an older control plane, say), the proxy refuses it with the reason.
        agent = FleetAgent(running, {"id": running.fleet_id, "command": ORIGINAL})
        agent._acted_on_upgrade({"type": "upgrade", "version": 7, "command": ["/opt/m2/bin/meshcore"]})
        upgrade = agent.collect()["upgrade"]
        assert upgrade["resource"] == 7 and upgrade["result"] == "refused"
        assert "cannot replace its process" in upgrade["error"]
    finally:
        plane.kill()


def test_a_meshcore_rollout_names_an_absolute_path():
    plan = parse_rollout({"meshcore": "/opt/m2/bin/meshcore"})
    assert plan.command == ("/opt/m2/bin/meshcore",) and plan.version is None and plan.text is None
    for message, error in [
        ({"meshcore": "bin/meshcore"}, "'bin/meshcore' is not an absolute path"),
        ({"meshcore": []}, "meshcore: expected the meshcore executable's path"),
        ({"meshcore": "/m", "version": 2}, "give one of config"),
    ]:
        with pytest.raises(RequestError, match=re.escape(error)):
            parse_rollout(message)
    done = mesh("rollout", "--control", "http://127.0.0.1:1", "--meshcore", "venv/bin/meshcore")
    assert done.returncode == 1
    assert "--meshcore venv/bin/meshcore: give an absolute path" in done.stderr


def test_the_fleet_table_follows_the_process_that_took_over():
    from meshcore.control.fleet import Fleet as FleetTable
    from meshcore.control.protocol import ConfigState, Golden, ProxyInfo, Report, UpgradeState

    def report(pid: int, started: float, version: str, responses: int) -> Report:
        proxy = ProxyInfo("host/1", version, pid=pid, started_at=started, command=(f"/m/{version}",))
        metrics = Golden(1.0, responses, 0, (1.0,), (responses, 0))
        return Report(proxy, ConfigState(version=1), metrics, UpgradeState(available=True))

    table = FleetTable()
    table.subscribed(ProxyInfo("host/1", "1", pid=1, started_at=100.0), None)
    table.report(report(1, 100.0, "1", 3), None, now=1.0)
    # The new process subscribes first: the old one is still the proxy until the new one reports.
    table.subscribed(ProxyInfo("host/1", "2", pid=2, started_at=200.0), None)
    assert table.proxy("host/1").version == "1"
    table.report(report(2, 200.0, "2", 4), None, now=2.0)
    # The draining old one reports once more: its responses count, but it no longer speaks for the id.
    table.report(report(1, 100.0, "1", 5), None, now=3.0)
    assert table.proxy("host/1").version == "2" and table.proxy("host/1").command == ("/m/2",)
    assert table.window(["host/1"], 0.0, 4.0).responses == 12
    # A process started later again (a rollback) takes over in turn.
    table.report(report(3, 300.0, "1", 0), None, now=4.0)
    assert table.proxy("host/1").pid == 3
