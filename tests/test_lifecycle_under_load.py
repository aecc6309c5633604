"""#17 end to end: a `meshcore run` process changed while it serves constant load, every request
counted. Two runs of meshcore's own load generator (HTTP/1.1 and HTTP/2) and a gRPC bidirectional
stream go through the proxy all along; each scenario ends with no failed request, no reset
connection, every gRPC message answered in order, and the upstreams' own counts adding up to the
answers the clients got (nothing lost, nothing doubled).

Scenarios: 20 hot reloads (PUT /config and SIGHUP) changing routes, weights, endpoints and
listeners; refused configs; an automatic rollback of a reload that points the route at a failing
service; an upgrade to a new process and back to the old version's command; a new process that
fails before it is ready. Everything waits on events (admin endpoints, output lines, counters)."""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
import httpx
import pytest

from conftest import OutputLines, closed_port, metric, wait_until
from meshcore import bench
from meshcore.backend import Backend

MESHCORE = [sys.executable, "-m", "meshcore"]
RATE = 250  # requests per second per load run: plenty, and light on 2 cores
LONG = 3600.0  # a load run's duration: never reached, each is stopped after its event
GRACE = "20"  # seconds; a stream the test ends drains well within it
HTTP_ROUTE = "web-route"
GRPC_ROUTE = "grpc-route"


# -- the parts ---------------------------------------------------------------------------------


class GrpcEcho:
    """A gRPC server whose bidirectional method answers each message upper-cased, counting them."""

    def __init__(self) -> None:
        self.served = 0
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Bidi": grpc.stream_stream_rpc_method_handler(self._bidi)}
        )
        self._server = grpc.server(ThreadPoolExecutor(4))
        self._server.add_generic_rpc_handlers((handler,))
        self.addr = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def _bidi(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for message in requests:
            with self._lock:
                self.served += 1
            yield message.upper()

    def stop(self) -> None:
        self._server.stop(0)


class GrpcStream:
    """One bidirectional call through the proxy, in lock step: message i is sent once the answer
    to i - 1 came back. It runs until `finish()`, which ends the request stream; the call must
    then end OK with every message answered, in order."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.sent = 0
        self.received = 0
        self.wrong: list[bytes] = []
        self.error: Optional[str] = None
        self._answers: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.answered_more(5, "the gRPC stream to start")

    def _messages(self) -> Iterator[bytes]:
        while not self._stop.is_set():
            self.sent += 1
            yield b"msg-%d" % (self.sent - 1)
            try:
                self._answers.get(timeout=30)
            except queue.Empty:
                return  # no answer: end the stream; finish() finds sent != received
            self._stop.wait(0.005)  # a steady trickle, not a busy loop

    def _run(self) -> None:
        try:
            for reply in self.channel.stream_stream("/test.Echo/Bidi")(self._messages(), timeout=600):
                if reply != b"MSG-%d" % self.received:
                    self.wrong.append(reply)
                self.received += 1
                self._answers.put(reply)
        except grpc.RpcError as e:
            self.error = f"{e.code()}: {e.details()}"
        finally:
            self._done.set()

    def answered_more(self, count: int, what: str) -> None:
        target = self.received + count
        wait_until(lambda: self.received >= target or self._done.is_set(), 30, what)
        assert not self._done.is_set(), f"the gRPC stream ended early: {self.error}"

    def finish(self) -> int:
        """Ends the stream and checks it; the number of messages."""
        self._stop.set()
        assert self._done.wait(30), "the gRPC stream did not end"
        self.channel.close()
        assert self.error is None, f"the gRPC stream failed after {self.received} messages: {self.error}"
        assert self.wrong == [] and self.sent == self.received > 0, (self.sent, self.received, self.wrong)
        return self.received

    def abandon(self) -> None:
        self._stop.set()
        self.channel.close()


class Traffic:
    """Constant load on `listen`: meshcore's load generator over HTTP/1.1 and over HTTP/2, and a
    gRPC stream. Runs until `finish()`."""

    def __init__(self, listen: str, *, stream: bool = True) -> None:
        url = f"http://{listen}/load"
        self.runs = {
            "HTTP/1.1": bench.start(url, rate=RATE, duration=LONG, connections=4),
            "HTTP/2": bench.start(url, rate=RATE, duration=LONG, connections=2, http2=True, streams=4),
        }
        self.stream: Optional[GrpcStream] = GrpcStream(listen) if stream else None
        self.advance(50, "load to start")

    def advance(self, count: int, what: str) -> None:
        """Waits until each load run has `count` more answers (and the stream a few more)."""
        start = {name: run.progress()[1] for name, run in self.runs.items()}

        def moved() -> bool:
            progress = {name: run.progress() for name, run in self.runs.items()}
            failing = {name: p[2] for name, p in progress.items() if p[2]}
            assert not failing, f"load errors {what}: {failing}"
            return all(p[1] >= start[name] + count for name, p in progress.items())

        wait_until(moved, 30, f"{count} more answers {what}")
        if self.stream is not None:
            self.stream.answered_more(3, f"gRPC answers {what}")

    def finish(self) -> dict[str, bench.BenchResult]:
        for run in self.runs.values():
            run.stop()
        results = {name: run.wait() for name, run in self.runs.items()}
        for name, r in results.items():
            print(f"{name}: {r.statuses}, resent {r.resent}, errors {r.errors or 'none'}")
        if self.stream is not None:
            print(f"gRPC stream: {self.stream.finish()} messages")
        return results

    def abandon(self) -> None:
        for run in self.runs.values():
            run.stop()
        if self.stream is not None:
            self.stream.abandon()


def all_ok(results: dict[str, bench.BenchResult]) -> int:
    """Every request answered 200, no error (a reset connection is one); how many."""
    for name, r in results.items():
        assert r.errors == {}, f"{name}: errors {r.errors}"
        assert set(r.statuses) == {200}, f"{name}: statuses {r.statuses}"
    return sum(r.statuses[200] for r in results.values())


class Run:
    """A `meshcore run` process (or `command run`), its output read as it comes."""

    def __init__(self, config: Path, *extra: str, command: Optional[list[str]] = None) -> None:
        self.proc = subprocess.Popen(
            [*(command or MESHCORE), "run", str(config), "--grace", GRACE, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = OutputLines(self.proc.stdout), OutputLines(self.proc.stderr)
        self.out.wait_for(r"^meshcore: ready", timeout=60)
        self.listen = re.search(r"listener outbound on (\S+)", self.out.wait_for("listener outbound")).group(
            1
        )
        self.admin = re.search(r"admin on (\S+)", self.out.wait_for("admin on")).group(1)

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.admin}/config/status", timeout=10).json()  # type: ignore[no-any-return]

    def metric(self, name: str, labels: str) -> float:
        text = httpx.get(f"{self.admin}/metrics", timeout=10).text
        return metric("\n".join(line for line in text.splitlines() if labels in line), name)

    def put(self, config: dict[str, Any]) -> httpx.Response:
        return httpx.put(
            f"{self.admin}/config",
            content=json.dumps(config),
            headers={"content-type": "application/json"},
            timeout=30,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gone(pid: int) -> bool:
    """Whether a process that is not our child has exited (a zombie serves nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def mesh_config(backends: dict[str, Backend], grpc_addr: str) -> dict[str, Any]:
    """One listener; gRPC to the echo server, everything else to service `web` (a, b)."""
    return {
        "admin": "127.0.0.1:0",
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0", "protocol": "auto"}],
        "routes": [
            {
                "name": GRPC_ROUTE,
                "listener": "outbound",
                "path_prefix": "/test.Echo/",
                "backends": [{"service": "grpc"}],
            },
            {"name": HTTP_ROUTE, "listener": "outbound", "backends": [{"service": "web"}]},
        ],
        "services": [
            {"name": "grpc", "protocol": "auto", "endpoints": [{"addr": grpc_addr}]},
            {
                "name": "web",
                "endpoints": [{"addr": backends["a"].addr}, {"addr": backends["b"].addr}],
            },
            {"name": "spare", "endpoints": [{"addr": backends["c"].addr}]},
        ],
    }


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in config["services"] if s["name"] == name)


def http_route(config: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in config["routes"] if r["name"] == HTTP_ROUTE)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Callable[..., tuple[Run, dict[str, Any], dict[str, Backend]]]]:
    """Backends a, b, c, a gRPC echo server, and `meshcore run` on mesh.yaml routing to them."""
    made: list[Any] = []

    def make(**extra: Any) -> tuple[Run, dict[str, Any], dict[str, Backend]]:
        backends = {name: Backend(name) for name in "abc"}
        echo = GrpcEcho()
        made.extend([*backends.values(), echo])
        config = {**mesh_config(backends, echo.addr), **extra}
        (tmp_path / "mesh.yaml").write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        run = Run(tmp_path / "mesh.yaml")
        made.append(run)
        return run, config, backends

    yield make
    for part in reversed(made):
        part.stop()


def upstream_total(backends: dict[str, Backend]) -> int:
    return sum(b.requests for b in backends.values())


# -- a. 20 hot reloads ---------------------------------------------------------------------------


def twenty_changes(base: dict[str, Any], backends: dict[str, Backend]) -> list[tuple[str, dict[str, Any]]]:
    """20 configs, each a change from the one before: (what, config)."""
    extra_listener = {"name": "extra", "bind": f"127.0.0.1:{closed_port()}"}
    extra_route = {"name": "extra-route", "listener": "extra", "backends": [{"service": "web"}]}
    steps: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("weights web 3 : spare 1", lambda c: http_route(c).update(
            backends=[{"service": "web", "weight": 3}, {"service": "spare", "weight": 1}])),
        ("endpoint c added to web", lambda c: service(c, "web")["endpoints"].append(
            {"addr": backends["c"].addr})),
        ("listener extra added", lambda c: (c["listeners"].append(dict(extra_listener)),
                                            c["routes"].append(dict(extra_route)))),
        ("endpoint a removed from web", lambda c: service(c, "web").update(
            endpoints=[e for e in service(c, "web")["endpoints"] if e["addr"] != backends["a"].addr])),
        ("outbound header_read_timeout 20s", lambda c: c["listeners"][0].update(header_read_timeout="20s")),
        ("listener extra removed", lambda c: (c["listeners"].remove(extra_listener),
                                              c["routes"].remove(extra_route))),
        ("route adds a response header", lambda c: http_route(c).update(
            response_headers={"set": {"x-version": "2"}})),
        ("weights web 1 : spare 0", lambda c: http_route(c).update(
            backends=[{"service": "web", "weight": 1}, {"service": "spare", "weight": 0}])),
        ("endpoint a back in web", lambda c: service(c, "web")["endpoints"].append(
            {"addr": backends["a"].addr})),
        ("outbound max_connections 5000", lambda c: c["listeners"][0].update(max_connections=5000)),
    ]  # fmt: skip
    configs: list[tuple[str, dict[str, Any]]] = []
    current = copy.deepcopy(base)
    for i in range(20):
        what, change = steps[i % len(steps)]
        if i == len(steps):  # second round: from the starting point again, each change anew
            current = copy.deepcopy(base)
            http_route(current)["path_prefix"] = "/"  # a route change of its own
            what += ", route path_prefix /"
        change(current)
        configs.append((what, copy.deepcopy(current)))
    return configs


def test_twenty_hot_reloads_under_load_lose_nothing(mesh, tmp_path):
    run, base, backends = mesh()
    traffic = Traffic(run.listen)
    probes = 0
    try:
        for i, (what, config) in enumerate(twenty_changes(base, backends), start=2):
            if i % 4 == 0:  # every fourth by SIGHUP after editing the file
                (tmp_path / "mesh.yaml").write_text(json.dumps(config))
                run.proc.send_signal(signal.SIGHUP)
                wait_until(lambda i=i: run.status()["version"] == i, 30, f"v{i} ({what}) by SIGHUP")
                assert run.status()["last_reload"]["source"] == "signal"
            else:
                r = run.put(config)
                assert r.status_code == 200, f"{what}: {r.text}"
                assert r.json() == {"result": "applied", "version": i}, what
            if any(listener["name"] == "extra" for listener in config["listeners"]):
                bind = config["listeners"][1]["bind"]
                assert httpx.get(f"http://{bind}/probe", timeout=10).status_code == 200, what
                probes += 1
            traffic.advance(40, f"after v{i}: {what}")
        results = traffic.finish()
    except BaseException:
        traffic.abandon()
        raise
    answered = all_ok(results)
    assert upstream_total(backends) == answered + probes
    status = run.status()
    assert status["version"] == 21 and status["reloads"]["applied"] == 20
    assert run.metric("config_reload_total", 'result="applied"') == 20
    history = httpx.get(f"{run.admin}/config/history", timeout=10).json()
    assert [v["version"] for v in history["versions"]] == list(range(21, 0, -1))
    assert all(backend.requests > 0 for backend in backends.values())
    assert run.proc.poll() is None


# -- b. a refused config -------------------------------------------------------------------------


def test_refused_configs_change_nothing(mesh, tmp_path):
    run, base, backends = mesh()
    config_file = tmp_path / "mesh.yaml"
    good = config_file.read_text()
    traffic = Traffic(run.listen)
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        # Does not validate: a route to a service that does not exist.
        bad = copy.deepcopy(base)
        http_route(bad)["backends"] = [{"service": "nowhere"}]
        r = run.put(bad)
        assert r.status_code == 400 and "ConfigError" in r.text and "nowhere" in r.text, r.text
        traffic.advance(40, "after a config that does not validate")
        # Validates, but the core cannot apply it: a new listener's port is in use.
        port_in_use = copy.deepcopy(base)
        port_in_use["listeners"].append({"name": "extra", "bind": f"127.0.0.1:{busy.getsockname()[1]}"})
        http_route(port_in_use)["backends"] = [{"service": "spare"}]
        r = run.put(port_in_use)
        assert r.status_code == 400 and "BindError" in r.text, r.text
        traffic.advance(40, "after a config that cannot bind")
        # A file that does not parse, by SIGHUP.
        config_file.write_text(good.replace('"routes"', '"routes', 1))
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: run.status()["reloads"]["refused"] == 3, 30, "the SIGHUP to be refused")
        traffic.advance(40, "after a file that does not parse")
        results = traffic.finish()
    except BaseException:
        traffic.abandon()
        raise
    finally:
        busy.close()
    answered = all_ok(results)
    assert upstream_total(backends) == answered
    assert backends["c"].requests == 0, "the refused configs routed to spare"
    status = run.status()
    assert status["version"] == 1 and status["reloads"] == {"applied": 0, "refused": 3, "unchanged": 0}
    last = status["last_reload"]
    assert (last["result"], last["source"], last["version"]) == ("refused", "signal", 1)
    assert str(config_file) in last["error"]
    assert status["file"]["matches"] is False and status["file"]["error"]
    assert run.metric("config_reload_total", 'result="refused"') == 3
    assert run.metric("config_reload_total", 'result="applied"') == 0
    assert "config refused (signal, signal)" in run.err.wait_for("config refused \\(signal")


# -- c. automatic rollback -------------------------------------------------------------------------


def test_a_reload_to_a_failing_service_is_rolled_back_within_the_window(mesh):
    policy = {"verify": "5s", "min_success_rate": 0.99, "max_p99_ratio": 20}
    run, base, backends = mesh(reload=policy)
    failing = Backend("failing")
    failing.set_failing(503)
    traffic = Traffic(run.listen)
    try:
        bad = copy.deepcopy(base)
        bad["services"].append({"name": "failing", "breaker": False, "endpoints": [{"addr": failing.addr}]})
        http_route(bad)["backends"] = [{"service": "failing"}]
        assert run.put(bad).json() == {"result": "applied", "version": 2}
        # Judged bad and rolled back by itself, within the 5 s window.
        wait_until(lambda: run.status()["version"] == 3, 30, "the automatic rollback")
        during = traffic.finish()  # the failures are all before here; new load shows they stopped
        traffic = Traffic(run.listen)
        traffic.advance(200, "after the rollback")
        after = traffic.finish()
    except BaseException:
        traffic.abandon()
        raise
    finally:
        failing.stop()
    assert all_ok(after) > 0
    for name, r in during.items():
        assert r.errors == {} and set(r.statuses) <= {200, 503}, f"{name}: {r.statuses} {r.errors}"
    failed = sum(r.statuses.get(503, 0) for r in during.values())
    assert failed > 0 and failing.requests == failed
    answered = sum(sum(r.statuses.values()) for r in [*during.values(), *after.values()])
    assert upstream_total(backends) + failing.requests == answered
    status = run.status()
    assert (status["source"], status["who"]) == ("rollback", "verify")
    assert run.metric("config_rollback_total", 'reason="verify-success-rate"') == 1
    versions = {
        v["version"]: v for v in httpx.get(f"{run.admin}/config/history", timeout=10).json()["versions"]
    }
    assert versions[2]["bad"] == "verify-success-rate"
    assert versions[3]["rollback_of"] == 1 and versions[3]["current"]
    # Within the verify window: the behaviour asked for, read from the history's own clock.
    assert versions[3]["applied_at"] - versions[2]["applied_at"] < 5
    assert "failed verification" in run.err.wait_for("config v2 failed verification")


# -- d. an upgrade and a rollback of the process ---------------------------------------------------


def meshcore_command(path: Path) -> list[str]:
    """Another installed meshcore, as far as the running one can tell: a command of its own."""
    path.parent.mkdir(parents=True)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m meshcore "$@"\n')
    path.chmod(0o755)
    return [str(path)]


def upgrade(admin: str, command: Optional[list[str]] = None) -> int:
    """`meshcore upgrade --admin ADMIN [--meshcore COMMAND]`; the new process's pid."""
    done = subprocess.run(
        [*MESHCORE, "upgrade", "--admin", admin, *(["--meshcore", command[0]] if command else [])],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(re.search(r"process (\d+) serves", done.stdout).group(1))


def test_an_upgrade_and_a_rollback_of_the_process_lose_nothing(tmp_path):
    v1 = meshcore_command(tmp_path / "v1" / "bin" / "meshcore")
    v2 = meshcore_command(tmp_path / "v2" / "bin" / "meshcore")
    backends = {name: Backend(name) for name in "abc"}
    echo = GrpcEcho()
    (tmp_path / "mesh.yaml").write_text(json.dumps(mesh_config(backends, echo.addr)))
    first = Run(tmp_path / "mesh.yaml", command=v1)
    pids: list[int] = []
    http: Optional[Traffic] = None
    streams: list[GrpcStream] = []
    try:
        http = Traffic(first.listen, stream=False)
        streams.append(GrpcStream(first.listen))
        # Up to v2: the stream started on v1's process stays there, drained, until it ends.
        pids.append(upgrade(first.admin, v2))
        http.advance(100, "after the upgrade")
        assert first.proc.poll() is None, "the old process left before its stream ended"
        streams[0].answered_more(5, "on the draining process")
        messages = streams[0].finish()
        assert first.proc.wait(30) == 0
        assert "meshcore: stopped" in first.out.text()
        # And back to v1's command, asked of the new process on the same admin port.
        streams.append(GrpcStream(first.listen))
        pids.append(upgrade(first.admin, v1))
        http.advance(100, "after the rollback")
        assert not gone(pids[0]), "the v2 process left before its stream ended"
        messages += streams[1].finish()
        wait_until(lambda: gone(pids[0]), 30, f"the v2 process {pids[0]} to exit")
        results = http.finish()
    except BaseException:
        for stream in streams:
            stream.abandon()
        if http is not None:
            http.abandon()
        raise
    finally:
        first.stop()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda pid=pid: gone(pid), 30, f"process {pid} to stop")
        for b in backends.values():
            b.stop()
        echo.stop()
    assert upstream_total(backends) == all_ok(results)
    assert echo.served == messages
    log = (tmp_path / "mesh.state" / "upgrade.log").read_text()
    assert f"{v2[0]} run" in log and f"{v1[0]} run" in log
    assert (
        f"taking over from process {first.proc.pid}" in log and f"taking over from process {pids[0]}" in log
    )


# -- e. a new process that fails before ready ------------------------------------------------------


def test_a_new_process_failing_before_ready_leaves_the_old_serving(mesh, tmp_path):
    run, base, backends = mesh()
    config_file = tmp_path / "mesh.yaml"
    good = config_file.read_text()
    traffic = Traffic(run.listen)
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        # Validates, takes the sockets over, then cannot bind its new listener.
        cfg = copy.deepcopy(base)
        cfg["listeners"].append({"name": "extra", "bind": f"127.0.0.1:{busy.getsockname()[1]}"})
        config_file.write_text(json.dumps(cfg))
        failed = subprocess.run(
            [*MESHCORE, "run", str(config_file), "--upgrade"], capture_output=True, text=True, timeout=60
        )
        config_file.write_text(good)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "BindError" in failed.stderr and "extra" in failed.stderr
        assert f"taking over from process {run.proc.pid}" in failed.stdout
        assert "still serving" in run.err.wait_for("upgrade failed")
        traffic.advance(100, "after the failed upgrade")
        results = traffic.finish()
    except BaseException:
        traffic.abandon()
        raise
    finally:
        busy.close()
    assert upstream_total(backends) == all_ok(results)
    assert run.proc.poll() is None
    assert httpx.get(f"{run.admin}/ready", timeout=10).status_code == 200


# -- an upgrade keeps the running config -----------------------------------------------------------


def test_an_upgrade_keeps_a_config_applied_by_put_not_the_file(mesh, tmp_path):
    # The config a PUT /config (or a rollback) applied lives in the history, not in the file: the
    # new process starts with the version the old one runs (`--config-version`), not the file.
    run, base, backends = mesh()
    traffic = Traffic(run.listen, stream=False)  # the old process exits here: no stream to drain
    try:
        put = copy.deepcopy(base)
        http_route(put)["backends"] = [{"service": "spare"}]
        assert run.put(put).json() == {"result": "applied", "version": 2}
        traffic.advance(40, "after the PUT")
        served_by_spare = backends["c"].requests
        new_pid = upgrade(run.admin)
        assert run.proc.wait(30) == 0
        traffic.advance(100, "after the upgrade")
        results = traffic.finish()
    except BaseException:
        traffic.abandon()
        raise
    try:
        assert upstream_total(backends) == all_ok(results)
        assert backends["c"].requests > served_by_spare, "the new process went back to the file's config"
        status = run.status()
        assert (status["version"], status["source"]) == (2, "api")
        assert status["file"]["matches"] is False
        log = (tmp_path / "mesh.state" / "upgrade.log").read_text()
        assert "--config-version 2" in log
    finally:
        os.kill(new_pid, signal.SIGTERM)
        wait_until(lambda: gone(new_pid), 30, f"process {new_pid} to stop")
