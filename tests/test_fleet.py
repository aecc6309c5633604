"""The fleet (#18): proxies following a control plane report their version, config version and
golden metrics; `meshcore mesh status` shows them; `meshcore mesh rollout` moves them to a new
config in waves, canary first, and rolls a bad one back on its own after the canary.

Real processes throughout: a control plane, three `meshcore run` proxies following it, backends,
and light load on every proxy while configs move."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from control_helpers import MESHCORE, ControlPlane, service_toml, write

from conftest import OutputLines, wait_until
from meshcore import __version__
from meshcore.control.protocol import RequestError, parse_report
from meshcore.control.rollout import parse_waves, wave_sizes

WEB = 'backends = [{ service = "web" }]'


def proxy_toml(control: str, route: str = WEB, services_extra: str = "") -> str:
    """A proxy whose service `web` takes its endpoints from the control plane."""
    return (
        f'[discovery]\ncontrol = "{control}"\nreport_interval = "100ms"\n\n'
        '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
        f'[[routes]]\nlistener = "outbound"\n{route}\n\n'
        '[[services]]\nname = "web"\nendpoints = []\n' + services_extra
    )


class Running:
    """`meshcore run` as a process; its id at the control plane is host/pid."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [*MESHCORE, "run", str(path), "--grace", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = OutputLines(self.proc.stdout), OutputLines(self.proc.stderr)
        line = self.out.wait_for("listener outbound on")
        self.listen = re.search(r"listener outbound on (\S+)", line).group(1)
        self.out.wait_for("meshcore: ready")
        self.id = f"{socket.gethostname()}/{self.proc.pid}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        finally:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Load:
    """Requests one after the other to each proxy, each answer kept: (proxy id, sent, ended, status)."""

    proxies: list[Running]
    answers: list[tuple[str, float, float, int]] = field(default_factory=list)
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
                    status = client.get(f"http://{p.listen}/").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((p.id, sent, time.monotonic(), status))

    def failures(self) -> list[tuple[str, float, float, int]]:
        return [a for a in list(self.answers) if a[3] != 200]

    def last_status(self, proxy_id: str) -> int:
        return [a for a in list(self.answers) if a[0] == proxy_id][-1][3]

    def answered(self, proxy_id: str) -> int:
        return sum(1 for a in list(self.answers) if a[0] == proxy_id)


def mesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCORE, "mesh", *args], capture_output=True, text=True, timeout=120)


class Fleet:
    def __init__(self, tmp_path: Path, backend) -> None:
        docs = tmp_path / "docs"
        docs.mkdir()
        self.web = backend("web")
        write(docs / "web.toml", service_toml("web", self.web.addr))
        self.plane = ControlPlane(docs)
        self.url = f"http://{self.plane.addr}"
        self.proxies: list[Running] = []
        for i in range(3):
            directory = tmp_path / f"proxy-{i}"
            directory.mkdir()
            (directory / "mesh.toml").write_text(proxy_toml(self.url))
            self.proxies.append(Running(directory / "mesh.toml"))
        self.ids = sorted(p.id for p in self.proxies)
        wait_until(self.all_reporting, 30, "every proxy to report its config version")

    def status(self) -> dict:
        done = mesh("status", "--control", self.url, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def rows(self) -> dict[str, dict]:
        return {row["id"]: row for row in self.status()["proxies"]}

    def all_reporting(self) -> bool:
        rows = self.rows()
        return all(i in rows and rows[i]["subscribed"] and rows[i]["config"]["version"] for i in self.ids)

    def rollout(self, *args: str) -> subprocess.CompletedProcess:
        return mesh("rollout", "--control", self.url, "--bake", "1s", "--min-requests", "5", *args)

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()
        self.plane.kill()


@pytest.fixture
def fleet(tmp_path, backend):
    made = Fleet(tmp_path, backend)
    yield made
    made.stop()


def test_mesh_status_lists_every_proxy_with_its_versions_and_metrics(fleet):
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        wait_until(
            lambda: all(row["responses"] > 0 for row in fleet.rows().values()),
            30,
            "the responses to show in the reports",
        )
    finally:
        load.stop.set()
    rows = fleet.rows()
    assert sorted(rows) == fleet.ids
    for row in rows.values():
        assert row["version"] == __version__
        assert row["config"]["version"] == 1 and row["config"]["fleet_version"] is None
        assert row["config"]["hash"].startswith("sha256:")
        assert row["subscribed"] and row["identity"] is None  # plain loopback: no identity
        assert row["success_rate"] == 1.0 and row["p99_ms"] is not None and row["rps"] > 0

    table = mesh("status", "--control", fleet.url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "PROXY", "IDENTITY", "VERSION", "CONFIG", "ZONE", "CLUSTER", "RPS", "SUCCESS", "P99", "LAST", "SEEN"
    ]  # fmt: skip
    for proxy_id in fleet.ids:
        [line] = [ln for ln in lines if ln.startswith(proxy_id)]
        assert __version__ in line and "local 1" in line and "100.00%" in line

    unknown = fleet.rollout("--version", "7")
    assert unknown.returncode == 1
    assert "no config v7 in the control plane" in unknown.stderr


def test_a_good_config_moves_every_proxy_in_waves_canary_first(fleet, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(proxy_toml(fleet.url, 'timeout = "9s"\nbackends = [{ service = "web" }]'))
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        # A loose p99 limit: a shared machine's noise must not fail a good config (slow ones: below).
        done = fleet.rollout("--config", str(good), "--waves", "1,50%,100%", "--max-p99-ratio", "10")
    finally:
        load.stop.set()
    assert done.returncode == 0, done.stdout + done.stderr
    waves = re.findall(r"wave (\d)/3(?: \(canary\))?: (\S+(?:, \S+)*) -> config v1", done.stdout)
    # Proxies ordered by id: the first is the canary, alone, and each moves once, in order.
    assert waves == [("1", fleet.ids[0]), ("2", fleet.ids[1]), ("3", fleet.ids[2])], done.stdout
    assert "wave 1/3 (canary)" in done.stdout and "done: 3 proxies run config v1" in done.stdout
    assert done.stdout.count(": ok: ") == 3, done.stdout
    assert load.failures() == []
    rows = fleet.rows()
    assert all(
        rows[i]["config"]["fleet_version"] == 1 and rows[i]["config"]["version"] == 2 for i in fleet.ids
    )
    for p in fleet.proxies:
        p.err.wait_for(r"config v2 applied \(control, control plane, fleet v1\)")
    assert fleet.plane.wait_logged("rollout v1: done")


def test_a_bad_config_is_rolled_back_after_the_canary(fleet, tmp_path, upstream):
    broken = upstream(
        lambda head, conn, n: b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        proxy_toml(
            fleet.url,
            'backends = [{ service = "broken" }]',
            f'\n[[services]]\nname = "broken"\nendpoints = [{{ addr = "{broken.addr}" }}]\n',
        )
    )
    before = {i: row["config"] for i, row in fleet.rows().items()}
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        started = time.monotonic()
        done = fleet.rollout("--config", str(bad), "--waves", "1,50%,100%")
        ended = time.monotonic()
        canary = fleet.ids[0]
        # Back on the old config, the canary answers again.
        wait_until(lambda: load.last_status(canary) == 200, 30, "the canary to answer 200 again")
        back = len(load.answers)
        wait_until(lambda: len(load.answers) > back + 30, 30, "more answers after the rollback")
    finally:
        load.stop.set()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"wave 1/3 (canary): {canary} -> config v1" in done.stdout
    assert "wave 2/3" not in done.stdout, "nothing moved past the canary"
    assert re.search(r"wave 1/3 \(canary\): worse: error rate up", done.stdout), done.stdout
    assert "failed and rolled back: wave 1/3 (canary) made things worse" in done.stdout
    assert "not confirmed back" not in done.stdout

    # Every proxy ends on the config it ran before; the canary through its own history's rollback.
    after = fleet.rows()
    for proxy_id in fleet.ids:
        assert after[proxy_id]["config"]["hash"] == before[proxy_id]["hash"]
        assert after[proxy_id]["config"]["fleet_version"] is None
    assert after[canary]["config"]["version"] == 3  # 1 at start, 2 the bad one, 3 its rollback
    assert after[canary]["config"]["push"]["result"] == "applied"
    assert all(after[i]["config"]["version"] == 1 for i in fleet.ids[1:])

    # Requests failed only at the canary, and only while the rollout ran.
    failures = load.failures()
    assert failures, "the bad config failed requests at the canary"
    assert {proxy_id for proxy_id, _, _, _ in failures} == {canary}
    assert all(started < done_at and sent_at < ended for _, sent_at, done_at, _ in failures)
    assert all(status == 500 for *_, status in failures)


def test_reports_and_waves_are_checked():
    report = {
        "proxy": {"id": "p", "version": "1"},
        "config": {"version": 2, "hash": "sha256:x", "fleet_version": None},
        "metrics": {
            "window_s": 1.0,
            "responses": 3,
            "failures": 1,
            "buckets_ms": [1, 2],
            "buckets": [1, 1, 1],
        },
    }
    parsed = parse_report(report)
    assert (parsed.metrics.responses, parsed.config.version) == (3, 2)
    for change, error in [
        ({"metrics": {**report["metrics"], "failures": 4}}, "metrics.failures: more than metrics.responses"),
        ({"metrics": {**report["metrics"], "buckets": [1]}}, "metrics.buckets: expected one count per bound"),
        ({"config": {"version": -1}}, "config.version: expected a non-negative integer"),
        ({"proxy": {"version": "1"}}, "proxy.id: expected a non-empty string"),
        ({"extra": 1}, "extra: unknown field"),
    ]:
        with pytest.raises(RequestError, match=re.escape(error)):
            parse_report({**report, **change})

    assert wave_sizes(parse_waves(["1", "25%", "50%", "100%"]), 3) == [1, 2, 3]
    assert wave_sizes(parse_waves(["1", "25%", "50%", "100%"]), 10) == [1, 3, 5, 10]
    assert wave_sizes(parse_waves(["1", "10%"]), 4) == [1, 4], "a plan always ends with every proxy"
    for bad in (["0"], ["150%"], ["x"], []):
        with pytest.raises(RequestError):
            parse_waves(bad)


def test_a_new_version_is_judged_by_its_own_process_not_the_one_draining():
    """After a hand-over both processes report under one id, the old one while it drains: a
    rollout's window counts only the process that now is the proxy."""
    from meshcore.control.fleet import Fleet as Table

    fleet = Table()

    def report(pid: int, started: float, responses: int, failures: int, at: float) -> None:
        wire = {
            "proxy": {"id": "p", "version": "1", "pid": pid, "started_at": started},
            "config": {"version": 1, "hash": "sha256:x", "fleet_version": None},
            "metrics": {
                "window_s": 1.0,
                "responses": responses,
                "failures": failures,
                "buckets_ms": [1],
                "buckets": [responses, 0],
            },
        }
        fleet.report(parse_report(wire), None, now=at)

    report(pid=10, started=100.0, responses=50, failures=0, at=1.0)
    report(pid=20, started=200.0, responses=5, failures=5, at=2.0)  # the new process takes over
    report(pid=10, started=100.0, responses=40, failures=0, at=3.0)  # the old one drains on
    report(pid=20, started=200.0, responses=30, failures=30, at=4.0)
    assert fleet.proxy("p").pid == 20, "the draining process does not take the entry back"
    mixed = fleet.window(["p"], 1.5, 5.0)
    own = fleet.window(["p"], 1.5, 5.0, current_only=True)
    assert (mixed.responses, mixed.error_rate) == (75, 35 / 75)
    assert (own.responses, own.error_rate) == (35, 1.0)


def test_reports_over_mtls_carry_the_proxy_identity_and_no_other_may_use_its_id(tmp_path, proxy, backend):
    import grpc

    from conftest import one_service
    from mesh_helpers import identity_files, make_ca
    from meshcore import identity
    from meshcore.control.protocol import REPORT_PATH, decode, encode

    ca = make_ca(tmp_path / "ca")
    for name, hosts in [("control", ["127.0.0.1"]), ("ns/default/sa/web", None), ("ns/ops/sa/admin", None)]:
        identity.issue(ca, name, out_prefix=str(tmp_path / name.rsplit("/", 1)[-1]), hosts=hosts)
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", backend("a").addr))
    anchors = str(ca / "trust-anchor.pem")
    tls = ["--tls-cert", f"{tmp_path}/control.crt", "--tls-key", f"{tmp_path}/control.key"]
    plane = ControlPlane(docs, tls=[*tls, "--trust-anchors", anchors])
    try:
        cfg = one_service([])
        cfg["discovery"] = {"control": f"https://{plane.addr}", "report_interval": "100ms"}
        cfg["identity"] = identity_files(ca, tmp_path / "web.crt", tmp_path / "web.key")
        proxy(cfg)
        operator = [
            *("--control", f"https://{plane.addr}", "--tls-cert", f"{tmp_path}/admin.crt"),
            *("--tls-key", f"{tmp_path}/admin.key", "--trust-anchors", anchors),
        ]

        def rows() -> list[dict]:
            done = mesh("status", *operator, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)["proxies"]

        wait_until(lambda: any(r["reports"] for r in rows()), 30, "the proxy's first report")
        [row] = rows()
        assert row["identity"] == "spiffe://mesh.local/ns/default/sa/web"
        assert row["config"]["version"] is None, "an in-process Proxy keeps no lifecycle"

        # Another identity reporting under the proxy's id is refused.
        creds = grpc.ssl_channel_credentials(
            Path(anchors).read_bytes(),
            private_key=(tmp_path / "admin.key").read_bytes(),
            certificate_chain=(tmp_path / "admin.crt").read_bytes(),
        )
        report = {
            "proxy": {"id": row["id"], "version": "0"},
            "metrics": {"window_s": 1, "responses": 0, "failures": 0, "buckets_ms": [1], "buckets": [0, 0]},
        }
        with grpc.secure_channel(plane.addr, creds) as channel:
            call = channel.unary_unary(REPORT_PATH, request_serializer=encode, response_deserializer=decode)
            with pytest.raises(grpc.RpcError) as refused:
                call(report, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to spiffe://mesh.local/ns/default/sa/web" in refused.value.details()
    finally:
        plane.kill()


def test_a_slower_config_is_rolled_back_on_its_p99(fleet, tmp_path, upstream):
    def slow(head: bytes, conn: int, n: int):
        time.sleep(0.05)  # the upstream's behaviour under test: 50 ms per answer
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    laggard = upstream(slow)
    bad = tmp_path / "slow.toml"
    bad.write_text(
        proxy_toml(
            fleet.url,
            'backends = [{ service = "slow" }]',
            f'\n[[services]]\nname = "slow"\nendpoints = [{{ addr = "{laggard.addr}" }}]\n',
        )
    )
    load = Load(fleet.proxies).start()
    try:
        wait_until(lambda: all(load.answered(i) >= 20 for i in fleet.ids), 30, "load on every proxy")
        done = fleet.rollout("--config", str(bad), "--waves", "1,100%")
    finally:
        load.stop.set()
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"wave 1/2 \(canary\): worse: p99 \d+\.\d ms above", done.stdout), done.stdout
    assert "wave 2/2" not in done.stdout
    assert load.failures() == []
    rows = fleet.rows()
    assert all(rows[i]["config"]["fleet_version"] is None for i in fleet.ids)
