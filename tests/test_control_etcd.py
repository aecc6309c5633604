"""Control plane replicas sharing state through etcd (#18): `control serve --etcd` on each; a change
reported by one replica's source reaches the subscribers of all with the same version; a proxy or
`Subscription` given several replicas moves to another when its own goes away, resumes with its
versions, and a proxy serves on with no failed request."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import httpx
import pytest
from control_helpers import ControlPlane, service_toml, write

from conftest import one_service, wait_until
from meshcore import ConfigError
from meshcore.control.client import Subscription
from meshcore.control.etcd_store import decode_endpoints, parse_endpoints_urls

PREFIX = "/meshcore/services/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A one-member etcd in a temporary directory; its JSON gateway read and written by the tests."""

    def __init__(self, data: Path, ports: tuple[int, int] | None = None):
        if shutil.which("etcd") is None:
            if os.environ.get("CI"):
                pytest.fail("etcd is not installed: .ci/run installs Debian's etcd-server")
            pytest.skip("etcd is not installed (apt-get install etcd-server)")
        client, peer = self.ports = ports or (_free_port(), _free_port())
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "test", "--data-dir", str(data), "--listen-client-urls", self.url]
            + ["--advertise-client-urls", self.url, "--listen-peer-urls", peer_url]
            + ["--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"test={peer_url}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        wait_until(self._healthy, 30, f"etcd to serve on {self.url} (log: {self.log[-5:]})")

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"etcd exited: {self.log[-10:]}"
        try:
            return (
                json.loads(urllib.request.urlopen(f"{self.url}/health", timeout=2).read())["health"] == "true"
            )
        except OSError:
            return False

    def call(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/v3/{path}", json.dumps(body).encode(), method="POST")
        return json.loads(urllib.request.urlopen(request, timeout=10).read())

    def key(self, name: str) -> dict:
        """The key of service `name` as etcd holds it (version counts its writes), {} if none."""
        kvs = self.call("kv/range", {"key": _b64(PREFIX + name)}).get("kvs", [])
        return kvs[0] if kvs else {}

    def put(self, name: str, value: bytes) -> None:
        self.call("kv/put", {"key": _b64(PREFIX + name), "value": base64.b64encode(value).decode()})

    def clear(self) -> None:
        self.call("kv/deleterange", {"key": _b64(PREFIX), "range_end": _b64(PREFIX[:-1] + "0")})

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data")
    yield server
    server.stop()


@pytest.fixture
def replicas(etcd):
    """Starts `control serve --etcd` replicas on a cleared prefix; kills them after the test."""
    etcd.clear()
    started: list[ControlPlane] = []

    def make(docs: Path | None) -> ControlPlane:
        plane = ControlPlane(docs, extra=["--etcd", etcd.url])
        started.append(plane)
        return plane

    yield make
    for plane in started:
        plane.kill()


def docs_with(tmp_path: Path, name: str, text: str) -> Path:
    docs = tmp_path / name
    docs.mkdir()
    write(docs / "web.toml", text)
    return docs


class Follower:
    """A `Subscription` to every service, its updates kept for the test to wait on."""

    def __init__(self, *urls: str):
        self.sub = Subscription(
            list(urls), ["*"], lambda changed: None, proxy_info={"id": "t", "version": "0"}
        )
        self.sub.start()
        assert self.sub.wait_synced(10), f"no snapshot from {urls}: {self.sub.last_error}"

    def web(self) -> dict:
        return self.sub.state().get("web") or {"version": 0, "exists": False, "endpoints": []}

    def addrs(self) -> list[str]:
        return [e["addr"] for e in self.web()["endpoints"]]


def test_a_change_through_one_replica_reaches_the_subscribers_of_both_with_the_same_versions(
    tmp_path, replicas, etcd
):
    docs = docs_with(tmp_path, "docs", service_toml("web", "127.0.0.1:9001"))
    writer, reader = replicas(docs), replicas(None)
    assert f"1 services from {docs}" in writer.ready and "no source of its own" in reader.ready
    via_writer, via_reader = Follower(f"http://{writer.addr}"), Follower(f"http://{reader.addr}")
    try:
        wait_until(lambda: via_reader.addrs() == ["127.0.0.1:9001"], what="the reader to serve the service")
        assert via_writer.web() == via_reader.web()
        assert via_writer.web()["version"] == int(etcd.key("web")["mod_revision"]), "the version is etcd's"
        assert via_writer.sub._epoch == via_reader.sub._epoch and via_writer.sub._epoch.startswith("etcd-")

        write(docs / "web.toml", service_toml("web", "127.0.0.1:9002"))
        for follower in (via_writer, via_reader):
            wait_until(lambda f=follower: f.addrs() == ["127.0.0.1:9002"], what="the change on both replicas")
        assert via_writer.web() == via_reader.web()

        (docs / "web.toml").unlink()
        for follower in (via_writer, via_reader):
            wait_until(lambda f=follower: not f.web()["exists"], what="the removal on both replicas")
        assert via_writer.web()["version"] == via_reader.web()["version"] > 0
        assert etcd.key("web") == {}
    finally:
        via_writer.sub.stop()
        via_reader.sub.stop()


def test_replicas_reporting_the_same_thing_make_one_change(tmp_path, replicas, etcd):
    one = docs_with(tmp_path, "one", service_toml("web", "127.0.0.1:9001"))
    two = docs_with(tmp_path, "two", service_toml("web", "127.0.0.1:9001"))
    first, second = replicas(one), replicas(two)
    assert first.wait_logged("etcd: wrote web") and second.wait_logged("etcd: web already as reported")
    assert etcd.key("web")["version"] == "1"
    for docs in (one, two):
        write(docs / "web.toml", service_toml("web", "127.0.0.1:9002"))
    wait_until(lambda: len(_reports(first)) == len(_reports(second)) == 2, what="both replicas to report it")
    assert etcd.key("web")["version"] == "2", "one write for the change"
    assert sorted(_reports(first)[1:] + _reports(second)[1:]) == ["already", "wrote"]


def _reports(plane: ControlPlane) -> list[str]:
    """What each report of web did at this replica: "wrote" etcd, or found it "already" so."""
    found = (re.search(r"etcd: (?:(wrote) web |web (already) )", line) for line in list(plane.log))
    return [m.group(1) or m.group(2) for m in found if m]


def test_a_subscription_moves_to_the_other_replica_and_resumes_with_its_versions(tmp_path, replicas):
    first = replicas(docs_with(tmp_path, "one", service_toml("web", "127.0.0.1:9001")))
    docs = docs_with(tmp_path, "two", service_toml("web", "127.0.0.1:9001"))
    second = replicas(docs)
    follower = Follower(f"http://{first.addr}", f"http://{second.addr}")
    try:
        assert follower.sub.connects == 1 and follower.sub.url == f"http://{first.addr}"
        held = follower.web()["version"]
        first.kill()
        # A change made while the subscription moves: in the resumed snapshot, or a delta after.
        write(docs / "web.toml", service_toml("web", "127.0.0.1:9003"))
        wait_until(lambda: follower.sub.connects == 2, 30, "the subscription to reach the second replica")
        assert follower.sub.url == f"http://{second.addr}"
        wait_until(lambda: follower.addrs() == ["127.0.0.1:9003"], what="the change made meanwhile")
        assert follower.web()["version"] > held
        resumed = [line for line in second.log if "subscribed: proxy t " in line]
        assert len(resumed) == 1 and re.search(
            r"; ([01]) resources in the snapshot \(resumed\)", resumed[0]
        ), resumed
        write(docs / "web.toml", service_toml("web", "127.0.0.1:9004"))
        wait_until(lambda: follower.addrs() == ["127.0.0.1:9004"], what="a change after the move")
    finally:
        follower.sub.stop()


def test_a_proxy_with_both_replicas_serves_on_with_no_failed_request_while_its_replica_is_killed(
    tmp_path, replicas, proxy, backend
):
    from meshcore import bench

    a, b = backend("a"), backend("b")
    first = replicas(docs_with(tmp_path, "one", service_toml("web", a.addr)))
    docs = docs_with(tmp_path, "two", service_toml("web", a.addr))
    second = replicas(docs)
    cfg = one_service([])
    cfg["discovery"] = {"control": [f"http://{first.addr}", f"http://{second.addr}"]}
    p = proxy(cfg)
    assert httpx.get(p.url("outbound"), timeout=10).headers["x-backend"] == "a"
    before = a.requests
    load = bench.start(p.url("outbound"), rate=300, duration=90, connections=4)
    try:
        done = load.progress()[1]
        wait_until(lambda: load.progress()[1] >= done + 30, what="load before the kill")
        first.kill()
        wait_until(lambda: second.logged("subscribed: proxy", "(resumed)"), 30, "the proxy to move")
        write(docs / "web.toml", service_toml("web", b.addr))
        wait_until(
            lambda: [e["addr"] for e in p.endpoints()["services"][0]["endpoints"]] == [b.addr],
            30,
            "the change through the second replica",
        )
        done = load.progress()[1]
        wait_until(lambda: b.requests >= 30 and load.progress()[1] >= done + 30, what="load after the move")
    finally:
        load.stop()
    result = load.wait()
    assert result.errors == {}, result.errors
    assert set(result.statuses) == {200}, result.statuses
    assert a.requests - before + b.requests == result.requests


def test_a_replica_keeps_a_report_made_while_etcd_is_down_and_writes_it_when_etcd_is_back(tmp_path):
    own = Etcd(tmp_path / "etcd")
    docs = docs_with(tmp_path, "docs", service_toml("web", "127.0.0.1:9001"))
    plane = ControlPlane(docs, extra=["--etcd", own.url])
    follower = Follower(f"http://{plane.addr}")
    try:
        own.stop()
        write(docs / "web.toml", service_toml("web", "127.0.0.1:9002"))
        wait_until(lambda: plane.logged("writing web"), 30, "the write to fail while etcd is down")
        assert follower.addrs() == ["127.0.0.1:9001"], "the replica serves what it holds"
        own = Etcd(tmp_path / "etcd", own.ports)
        wait_until(lambda: follower.addrs() == ["127.0.0.1:9002"], 30, "the report written once etcd is back")
        assert own.key("web")["version"] == "2"
    finally:
        follower.sub.stop()
        plane.kill()
        own.stop()


def test_a_bad_value_written_by_hand_is_logged_with_its_key_and_ignored(tmp_path, replicas, etcd):
    plane = replicas(None)
    etcd.put("broken", b'[{"addr": 7}]')
    etcd.put("good", b'[{"addr": "127.0.0.1:9001", "zone": "z"}]')
    follower = Follower(f"http://{plane.addr}")
    try:
        wait_until(lambda: "good" in follower.sub.state(), what="the good service")
        wait_until(
            lambda: plane.logged(f"etcd key {PREFIX}broken", "ignored: [0]: expected an object with an addr")
        )
        assert "broken" not in follower.sub.state()
        assert follower.sub.state()["good"]["endpoints"][0]["zone"] == "z"
    finally:
        follower.sub.stop()


def test_endpoint_values_are_checked_field_by_field():
    assert decode_endpoints(b'[{"addr": "h:1"}]')[0] == {
        "addr": "h:1",
        "zone": None,
        "cluster": None,
        "identity": None,
        "weight": 1,
        "protocol": None,
    }
    for value, why in [
        (b"nope", "not JSON"),
        (b"{}", "expected a JSON list"),
        (b'[{"addr": "h:1", "port": 2}]', r"\[0\]\.port: unknown field"),
        (b'[{"addr": "h:1", "weight": -1}]', r"\[0\]\.weight"),
        (b'[{"addr": "h:1", "zone": 3}]', r"\[0\]\.zone: expected a string"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_endpoints(value)


def test_etcd_urls_are_checked():
    assert parse_endpoints_urls("http://127.0.0.1:2379, http://[::1]:2380") == [
        ("127.0.0.1", 2379),
        ("::1", 2380),
    ]
    for spec, why in [
        ("127.0.0.1:2379", "expected http://HOST:PORT"),
        ("http://h", "expected http://HOST:PORT"),
        ("https://h:2379", "https:// is not supported"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_endpoints_urls(spec)


def test_without_the_etcd_extra_the_store_says_what_to_install(monkeypatch):
    from meshcore.control.etcd_store import EtcdStore

    monkeypatch.setitem(sys.modules, "aetcd", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[etcd\]'"):
        EtcdStore([("127.0.0.1", 2379)])
