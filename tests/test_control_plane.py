"""The control plane (#18, first slice): `meshcore control serve` over a watched directory, and
the `Subscription` client, against real server processes on loopback."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from control_helpers import ControlPlane, service_toml, write

from conftest import wait_until
from mesh_helpers import make_ca
from meshcore import identity
from meshcore.control.client import Subscription, backoff_delay
from meshcore.control.protocol import SUBSCRIBE_PATH, decode, encode
from meshcore.errors import ConfigError

MESHCORE = [sys.executable, "-m", "meshcore"]
PROXY = {"id": "test-proxy", "version": "0.1.0", "zone": "zone-a", "cluster": None}


@pytest.fixture
def control() -> Iterator[Any]:
    started: list[ControlPlane] = []

    def make(docs: Path, **kwargs: Any) -> ControlPlane:
        plane = ControlPlane(docs, **kwargs)
        started.append(plane)
        return plane

    yield make
    for plane in started:
        plane.kill()


class RawStream:
    """One Subscribe stream read in a thread: the messages exactly as the server sent them."""

    def __init__(self, addr: str, request: dict[str, Any]):
        self.channel = grpc.insecure_channel(addr)
        subscribe = self.channel.unary_stream(
            SUBSCRIBE_PATH, request_serializer=encode, response_deserializer=decode
        )
        self.call = subscribe(request)
        self.messages: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as e:
            self.messages.put(e)

    def next(self) -> Any:
        message = self.messages.get(timeout=15)
        assert not isinstance(message, Exception), message
        return message

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stream() -> Iterator[Any]:
    opened: list[RawStream] = []

    def make(addr: str, services: list[str], **extra: Any) -> RawStream:
        s = RawStream(addr, {"proxy": PROXY, "services": services, "versions": {}, **extra})
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def by_name(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in resources}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    write(d / "web.toml", service_toml("web", "10.0.0.1:80", "10.0.0.2:80"))
    write(
        d / "api.yaml",
        "services:\n  - name: api\n    endpoints:\n"
        "      - {addr: '10.0.1.1:80', zone: zone-b, cluster: east, weight: 3, protocol: http2,"
        " identity: 'spiffe://mesh.local/ns/default/sa/api'}\n"
        "  - name: idle\n",
    )
    return d


def test_the_snapshot_comes_first_with_every_service_asked_for(control, stream, docs):
    plane = control(docs)
    first = stream(plane.addr, ["web", "api", "idle", "ghost"]).next()
    assert first["kind"] == "snapshot" and first["epoch"]
    got = by_name(first["resources"])
    assert set(got) == {"web", "api", "idle", "ghost"}
    assert got["web"]["type"] == "service" and got["web"]["version"] == 1 and got["web"]["exists"]
    assert [e["addr"] for e in got["web"]["endpoints"]] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert got["api"]["endpoints"] == [
        {
            "addr": "10.0.1.1:80",
            "zone": "zone-b",
            "cluster": "east",
            "identity": "spiffe://mesh.local/ns/default/sa/api",
            "weight": 3,
            "protocol": "http2",
        }
    ]
    # "No endpoints now" and "does not exist" are two answers.
    assert got["idle"]["exists"] is True and got["idle"]["endpoints"] == []
    assert got["ghost"]["exists"] is False and got["ghost"]["endpoints"] == []
    assert plane.wait_logged("subscribed: proxy test-proxy", "zone zone-a")


def test_a_file_edit_is_a_delta_with_only_that_service_one_version_on(control, stream, docs):
    plane = control(docs)
    everything = stream(plane.addr, ["*"])
    snapshot = by_name(everything.next()["resources"])
    assert set(snapshot) == {"web", "api", "idle"}
    only_api = stream(plane.addr, ["api"])
    only_api.next()

    write(docs / "web.toml", service_toml("web", "10.0.0.1:80", "10.0.0.3:80"))
    delta = everything.next()
    assert delta["kind"] == "delta"
    assert [r["name"] for r in delta["resources"]] == ["web"]
    web = delta["resources"][0]
    assert web["version"] == snapshot["web"]["version"] + 1
    assert [e["addr"] for e in web["endpoints"]] == ["10.0.0.1:80", "10.0.0.3:80"]

    # The api subscriber heard nothing of web: its next message is api's own change.
    write(docs / "api.yaml", "services:\n  - name: api\n    endpoints: []\n")
    api = only_api.next()
    assert [(r["name"], r["exists"], r["endpoints"]) for r in api["resources"]] == [("api", True, [])]
    # `idle` left the file: for the "*" subscriber it no longer exists (api changed with it).
    delta = by_name(everything.next()["resources"])
    assert delta["idle"]["exists"] is False and delta["idle"]["version"] == snapshot["idle"]["version"] + 1
    assert delta["api"]["exists"] is True and delta["api"]["endpoints"] == []


def test_a_removed_file_makes_its_services_not_exist(control, stream, docs):
    plane = control(docs)
    s = stream(plane.addr, ["web"])
    assert by_name(s.next()["resources"])["web"]["exists"]
    (docs / "web.toml").unlink()
    web = s.next()["resources"][0]
    assert (web["name"], web["exists"], web["version"]) == ("web", False, 2)
    write(docs / "web.toml", service_toml("web", "10.0.0.9:80"))
    web = s.next()["resources"][0]
    assert (web["exists"], web["version"], web["endpoints"][0]["addr"]) == (True, 3, "10.0.0.9:80")


def test_a_bad_document_is_refused_with_file_and_field_and_the_old_state_stays(control, stream, docs):
    plane = control(docs)
    s = stream(plane.addr, ["*"])
    before = by_name(s.next()["resources"])

    write(docs / "web.toml", service_toml("web", "not-an-address"))
    wait_until(
        lambda: plane.logged("refused", "web.toml", "services[0].endpoints[0].addr"),
        what="the refusal naming file and field",
    )
    assert plane.wait_logged("web.toml", "its previous content stays in force")
    write(docs / "web.toml", '[[services]]\nname = "web"\nendpionts = []\n')
    wait_until(
        lambda: plane.logged("web.toml", "services[0].endpionts", "unknown field"), what="typo refused"
    )
    # A second file defining web is refused, naming both files; the first keeps it.
    write(docs / "web2.toml", service_toml("web", "10.0.0.7:80"))
    wait_until(
        lambda: plane.logged("refused", "web2.toml", "'web' is also defined in", "web.toml"),
        what="the duplicate refused",
    )

    # Nothing was sent for web: the next message is the next good change, to api.
    write(docs / "api.yaml", "services:\n  - name: api\n")
    delta = s.next()
    assert {r["name"] for r in delta["resources"]} == {"api", "idle"}
    # A new subscriber gets web as it was before the bad edits.
    again = by_name(stream(plane.addr, ["web"]).next()["resources"])
    assert again["web"] == before["web"]

    # Fixed, web changes at last, by one version.
    write(docs / "web.toml", service_toml("web", "10.0.0.5:80"))
    web = s.next()["resources"]
    assert [(r["name"], r["version"]) for r in web] == [("web", before["web"]["version"] + 1)]


def test_a_resumed_stream_leaves_out_what_the_proxy_has(control, stream, docs):
    plane = control(docs)
    first = stream(plane.addr, ["web", "api"]).next()
    versions = {r["name"]: r["version"] for r in first["resources"]}
    resumed = stream(plane.addr, ["web", "api"], versions=versions, epoch=first["epoch"]).next()
    assert resumed["kind"] == "snapshot" and resumed["resources"] == []
    stale = stream(plane.addr, ["web", "api"], versions={**versions, "web": 0}, epoch=first["epoch"]).next()
    assert [r["name"] for r in stale["resources"]] == ["web"]
    # Versions from another epoch (a restarted control plane) are not trusted: all is sent.
    other = stream(plane.addr, ["web", "api"], versions=versions, epoch="another").next()
    assert {r["name"] for r in other["resources"]} == {"web", "api"}


def test_a_bad_request_is_refused_naming_the_field(control, docs):
    plane = control(docs)
    with grpc.insecure_channel(plane.addr) as channel:
        call = channel.unary_stream(SUBSCRIBE_PATH, request_serializer=encode, response_deserializer=decode)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(call({"proxy": PROXY, "services": "web"})))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "services" in refused.value.details()


class Updates:
    """on_update's calls, in order."""

    def __init__(self) -> None:
        self.calls: queue.Queue[list[dict[str, Any]]] = queue.Queue()

    def __call__(self, changed: list[dict[str, Any]]) -> None:
        self.calls.put(changed)

    def next(self) -> dict[str, dict[str, Any]]:
        return by_name(self.calls.get(timeout=15))


def test_the_client_keeps_its_state_reconnects_and_resumes_after_a_restart(control, docs):
    plane = control(docs)
    updates = Updates()
    sub = Subscription(f"http://{plane.addr}", ["web", "api"], updates, proxy_info=PROXY).start()
    try:
        assert sub.wait_synced(15)
        first = updates.next()
        assert set(first) == {"web", "api"}
        known = sub.state()

        plane.kill()
        wait_until(lambda: sub.last_error is not None, what="the client to notice the control plane gone")
        assert sub.state() == known  # kept meanwhile

        write(docs / "api.yaml", "services:\n  - name: api\n    endpoints: [{addr: '10.0.1.9:80'}]\n")
        restarted = control(docs, bind=plane.addr)
        wait_until(lambda: sub.connects == 2, what="the client to reconnect")
        # What changed while it was away comes first, and only that (web is the same).
        assert list(updates.next()) == ["api"]
        assert sub.state()["web"]["endpoints"] == known["web"]["endpoints"]

        write(docs / "web.toml", service_toml("web", "10.0.0.4:80"))
        web = updates.next()
        assert list(web) == ["web"] and web["web"]["endpoints"][0]["addr"] == "10.0.0.4:80"
        assert updates.calls.empty()
        assert restarted.wait_logged("subscribed: proxy test-proxy")
    finally:
        sub.stop()


def test_the_client_accepts_plain_http_on_loopback_only():
    with pytest.raises(ConfigError, match="loopback hosts only"):
        Subscription("http://10.0.0.1:8470", ["web"], print)
    with pytest.raises(ConfigError, match="https needs tls"):
        Subscription("https://control.mesh:8470", ["web"], print)
    Subscription("http://[::1]:8470", ["web"], print)  # refused at connect, not here


def test_backoff_is_full_jitter_from_100ms_to_10s():
    def top(_low: float, high: float) -> float:
        return high

    assert [backoff_delay(n, top) for n in (0, 1, 2, 6, 7, 30)] == [0.1, 0.2, 0.4, 6.4, 10.0, 10.0]
    assert backoff_delay(3, lambda low, _high: low) == 0.0


def test_without_tls_only_loopback_is_served(docs):
    r = subprocess.run(
        [*MESHCORE, "control", "serve", "--dir", str(docs), "--bind", "0.0.0.0:8470"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "binds loopback only" in r.stderr and "--tls-cert" in r.stderr
    r = subprocess.run(
        [*MESHCORE, "control", "serve", "--dir", str(docs), "--tls-cert", "c.pem"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "TLS needs --tls-cert, --tls-key and --trust-anchors" in r.stderr


def test_mtls_serves_a_client_certified_by_the_anchors_and_refuses_others(control, docs, tmp_path):
    ca = make_ca(tmp_path / "ca")
    identity.issue(ca, "control", out_prefix=str(tmp_path / "control"), hosts=["127.0.0.1"])
    identity.issue(ca, "ns/default/sa/web", out_prefix=str(tmp_path / "web"))
    stranger_ca = tmp_path / "stranger-ca"
    identity.init_ca(stranger_ca, trust_domain="mesh.local")
    identity.issue(stranger_ca, "ns/default/sa/web", out_prefix=str(tmp_path / "stranger"))
    anchors = ca / "trust-anchor.pem"
    plane = control(
        docs,
        tls=["--tls-cert", f"{tmp_path}/control.crt", "--tls-key", f"{tmp_path}/control.key"]
        + ["--trust-anchors", str(anchors)],
    )

    updates = Updates()
    good = (tmp_path / "web.crt", tmp_path / "web.key", anchors)
    sub = Subscription(f"https://{plane.addr}", ["web"], updates, tls=good, proxy_info=PROXY).start()
    try:
        assert sub.wait_synced(15)
        assert updates.next()["web"]["exists"]
        assert plane.wait_logged(
            "subscribed: proxy test-proxy", "identity spiffe://mesh.local/ns/default/sa/web"
        )
    finally:
        sub.stop()

    def refused(credentials: grpc.ChannelCredentials) -> grpc.RpcError:
        with grpc.secure_channel(plane.addr, credentials) as channel:
            call = channel.unary_stream(
                SUBSCRIBE_PATH, request_serializer=encode, response_deserializer=decode
            )
            with pytest.raises(grpc.RpcError) as e:
                next(iter(call({"proxy": PROXY, "services": ["web"]}, timeout=15)))
        return e.value

    no_cert = refused(grpc.ssl_channel_credentials(anchors.read_bytes()))
    stranger = refused(
        grpc.ssl_channel_credentials(
            anchors.read_bytes(),
            (tmp_path / "stranger.key").read_bytes(),
            (tmp_path / "stranger.crt").read_bytes(),
        )
    )
    assert no_cert.code() == stranger.code() == grpc.StatusCode.UNAVAILABLE
    assert sum(line.startswith("meshcore-control: subscribed:") for line in plane.log) == 1
    # Plain text to an mTLS control plane is refused too.
    plain = RawStream(plane.addr, {"proxy": PROXY, "services": ["web"]})
    assert isinstance(plain.messages.get(timeout=15), grpc.RpcError)
    plain.close()


def test_a_hundred_subscribers_all_get_a_change(control, docs):
    plane = control(docs)

    async def run() -> set[int]:
        channels = [grpc.aio.insecure_channel(plane.addr) for _ in range(100)]
        streams = [
            ch.unary_stream(SUBSCRIBE_PATH, request_serializer=encode, response_deserializer=decode)(
                {"proxy": {**PROXY, "id": f"p{i}"}, "services": ["web"], "versions": {}}
            )
            for i, ch in enumerate(channels)
        ]
        try:
            for s in streams:
                assert (await asyncio.wait_for(s.read(), 15))["kind"] == "snapshot"
            write(docs / "web.toml", service_toml("web", "10.0.0.8:80"))
            deltas = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 30)
            return {d["resources"][0]["version"] for d in deltas if d["resources"][0]["name"] == "web"}
        finally:
            for ch in channels:
                await ch.close()

    assert asyncio.run(run()) == {2}
    assert plane.wait_logged("subscribed: proxy p99")
