"""The Kubernetes source and TokenReview (#18), against the fake API server on loopback
(tests/kube_fake.py: HTTPS, bearer token, the recorded objects in tests/data/kube/)."""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fake import FakeKubeApi, recorded

from conftest import wait_until
from meshcore.control.client import Subscription
from meshcore.control.sources import Changes
from meshcore.control.sources.kubernetes import KubernetesSource
from meshcore.control.store import Store
from meshcore.errors import ConfigError, MeshcoreError
from meshcore.kube.tokenreview import TokenReviewer, workload_name

MESHCORE = [sys.executable, "-m", "meshcore"]
SLICES, SERVICES = "endpointslices", "services"


def ep(addr: str, zone: str, protocol: str = "http1", cluster: Any = None) -> dict[str, Any]:
    return {
        "addr": addr,
        "zone": zone,
        "cluster": cluster,
        "identity": None,
        "weight": 1,
        "protocol": protocol,
    }


# What the recorded lists hold, as meshcore serves it.
WEB = [ep("10.244.1.11:8080", "zone-a"), ep("10.244.2.12:8080", "zone-b"), ep("10.244.3.21:8080", "zone-c")]
API = [ep("[fd00:10:244::31]:9090", "zone-a", "http2")]
RECORDED = {"web.shop": WEB, "api.shop": API, "db.data": []}


class Subscriber:
    """What a source reports, applied to a real Store (as `control serve` does) and kept in order."""

    def __init__(self) -> None:
        self.store = Store()
        self.changes: list[Changes] = []
        self._feed = self.store.feed("kubernetes")
        self._lock = threading.Lock()

    def __call__(self, changes: Changes) -> None:
        with self._lock:
            self.changes.append(changes)
        self._feed(changes)

    def state(self) -> dict[str, list[Any]]:
        return {s.name: list(s.endpoints) for s in self.store.all() if s.exists}

    def addrs(self, name: str) -> list[str]:
        return [e["addr"] for e in self.state().get(name, [])]


class Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def has(self, *parts: str) -> bool:
        return any(all(p in line for p in parts) for line in list(self.lines))


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeApi]:
    api = FakeKubeApi(tmp_path).start()
    yield api
    api.stop()


@pytest.fixture
def log() -> Iterator[Log]:
    handler = Log()
    logger = logging.getLogger("meshcore.control")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def source(kube: FakeKubeApi) -> Iterator[Any]:
    started: list[KubernetesSource] = []

    def start(**kwargs: Any) -> tuple[KubernetesSource, Subscriber]:
        src = KubernetesSource(kube.kubeconfig(), backoff_cap=0.2, **kwargs)
        subscriber = Subscriber()
        src.start(subscriber)
        started.append(src)
        return src, subscriber

    yield start
    for src in started:
        src.stop()


def slice_of(kube: FakeKubeApi, namespace: str, name: str) -> dict[str, Any]:
    """A copy of the slice as the fake holds it now, or as recorded once it is gone."""
    found = kube.objects[SLICES].get((namespace, name))
    if found is None:
        found = next(o for o in recorded(f"{SLICES}.json")["items"] if o["metadata"]["name"] == name)
    return copy.deepcopy(found)


def watching(kube: FakeKubeApi) -> None:
    wait_until(
        lambda: kube.open_watches(SERVICES) == 1 and kube.open_watches(SLICES) == 1, what="both watches"
    )


def test_the_list_is_the_first_snapshot_merged_filtered_and_named_name_namespace(source):
    _, subscriber = source(cluster="east")
    # Reported whole before start returned, in one report.
    assert len(subscriber.changes) == 1
    east = {n: [{**e, "cluster": "east"} for e in eps] for n, eps in RECORDED.items()}
    assert subscriber.state() == east
    # web.shop: two slices merged; the not-ready endpoint and the serving-but-terminating one left out.
    assert "10.244.1.13:8080" not in subscriber.addrs("web.shop")
    assert "10.244.2.14:8080" not in subscriber.addrs("web.shop")
    # db.data has no slices: it exists with no endpoints.
    assert {s.name: s.exists for s in subscriber.store.all()}["db.data"] is True


def test_one_namespace_only(source, kube):
    _, subscriber = source(namespace="shop")
    assert subscriber.state() == {"web.shop": WEB, "api.shop": API}
    assert kube.requested(SERVICES) and all("namespaces/shop" in p for _, p, _ in kube.requests)


def test_watched_changes_of_slices_and_services_reach_the_subscriber(source, kube):
    _, subscriber = source()
    watching(kube)

    # A pod becomes ready; another moves zone.
    web = slice_of(kube, "shop", "web-7xk2p")
    web["endpoints"][2]["conditions"] = {"ready": True, "serving": True, "terminating": False}
    web["endpoints"][1]["zone"] = "zone-c"
    kube.apply(SLICES, "MODIFIED", web)
    wait_until(lambda: "10.244.1.13:8080" in subscriber.addrs("web.shop"), what="the ready pod")
    assert subscriber.state()["web.shop"] == [
        ep("10.244.1.11:8080", "zone-a"),
        ep("10.244.1.13:8080", "zone-a"),
        ep("10.244.2.12:8080", "zone-c"),
        ep("10.244.3.21:8080", "zone-c"),
    ]

    # A pod starts terminating (still serving): it leaves at once.
    web["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    kube.apply(SLICES, "MODIFIED", web)
    wait_until(
        lambda: "10.244.1.11:8080" not in subscriber.addrs("web.shop"), what="the terminating pod gone"
    )

    # A slice deleted: its endpoints leave the merged set, the other slice's stay.
    kube.apply(SLICES, "DELETED", slice_of(kube, "shop", "web-m9q4z"))
    wait_until(
        lambda: "10.244.3.21:8080" not in subscriber.addrs("web.shop"), what="the slice's endpoints gone"
    )
    assert subscriber.addrs("web.shop") == ["10.244.1.13:8080", "10.244.2.12:8080"]

    # A new Service, then its slice; the port chosen by the annotation.
    cache = copy.deepcopy(kube.objects[SERVICES][("data", "db")])
    cache["metadata"].update(name="cache", annotations={"meshcore.io/port": "6380"})
    kube.apply(SERVICES, "ADDED", cache)
    wait_until(lambda: "cache.data" in subscriber.state(), what="the new service")
    assert subscriber.state()["cache.data"] == []
    cache_slice = slice_of(kube, "shop", "web-m9q4z")
    cache_slice["metadata"].update(
        name="cache-x1", namespace="data", labels={"kubernetes.io/service-name": "cache"}
    )
    cache_slice["ports"] = [
        {"name": "plain", "port": 6379},
        {"name": "tls", "port": 6380, "appProtocol": "redis"},
    ]
    kube.apply(SLICES, "ADDED", cache_slice)
    wait_until(lambda: subscriber.addrs("cache.data") == ["10.244.3.21:6380"], what="the new slice")
    assert subscriber.state()["cache.data"][0]["protocol"] is None

    # A Service deleted: it no longer exists (its slices no longer count).
    kube.apply(SERVICES, "DELETED", kube.objects[SERVICES][("data", "db")])
    wait_until(lambda: "db.data" not in subscriber.state(), what="the service removed")
    assert {s.name: s.exists for s in subscriber.store.all()}["db.data"] is False
    assert not any(c for c in subscriber.changes if "web.shop" in c.removed)


def test_a_malformed_object_is_refused_by_name_and_field_and_the_old_state_stays(source, kube, log):
    _, subscriber = source()
    watching(kube)
    bad = slice_of(kube, "shop", "api-2c8vd")
    bad["endpoints"][0]["addresses"] = [31]
    kube.apply(SLICES, "MODIFIED", bad)
    wait_until(lambda: log.has("refused MODIFIED EndpointSlice shop/api-2c8vd", "addresses"), what="refusal")
    assert subscriber.state()["api.shop"] == API
    # Its next good version is taken.
    good = slice_of(kube, "shop", "api-2c8vd")
    good["endpoints"][0]["addresses"] = ["fd00:10:244::32"]
    kube.apply(SLICES, "MODIFIED", good)
    wait_until(lambda: subscriber.addrs("api.shop") == ["[fd00:10:244::32]:9090"], what="the fixed slice")


def test_a_bookmark_is_followed_and_a_410_lists_again_reporting_only_the_difference(source, kube, log):
    _, subscriber = source()
    watching(kube)

    # A bookmark moves the version on: the next watch starts from it.
    version = kube.bookmark(SLICES)
    kube.apply(SERVICES, "MODIFIED", kube.objects[SERVICES][("shop", "web")])  # moves the shared counter
    bookmark = kube.bookmark(SLICES)
    assert int(bookmark) > int(version)
    wait_until(lambda: kube.open_watches(SLICES) == 1, what="the watch still open")
    kube.drop_watches(SLICES)
    wait_until(
        lambda: kube.requested(SLICES, watch="true", resourceVersion=bookmark), what="rewatch at bookmark"
    )
    # Open, not just asked for: a watch opened after the changes below would replay them from history.
    wait_until(lambda: kube.open_watches(SLICES) == 1, what="the rewatch open")

    # Changes the watch never delivers (lost to compaction), then 410 Gone.
    before = len(subscriber.changes)
    kube.apply(SLICES, "DELETED", slice_of(kube, "shop", "web-m9q4z"), deliver=False)
    api = slice_of(kube, "shop", "api-2c8vd")
    api["endpoints"][0]["zone"] = "zone-b"
    kube.apply(SLICES, "MODIFIED", api, deliver=False)
    db = slice_of(kube, "shop", "web-m9q4z")
    db["metadata"].update(name="db-p0", namespace="data", labels={"kubernetes.io/service-name": "db"})
    db["ports"] = [{"name": "pg", "port": 5432}]
    kube.apply(SLICES, "ADDED", db, deliver=False)
    kube.apply(SERVICES, "DELETED", kube.objects[SERVICES][("shop", "api")], deliver=False)
    lists = len(kube.requested(SLICES, limit="500"))
    kube.expire(SERVICES)  # first, so that api's slice change finds api gone (the watches are apart)
    wait_until(lambda: "api.shop" not in subscriber.state(), what="the lost deletion listed")
    kube.expire(SLICES)
    wait_until(lambda: subscriber.addrs("db.data") == ["10.244.3.21:5432"], what="db's endpoints")
    assert len(kube.requested(SLICES, limit="500")) == lists + 1
    assert log.has("410 too old resource version", "listing endpointslices again")
    # Only the difference was reported: web lost a slice, db gained one, api is gone.
    reported = subscriber.changes[before:]
    assert {n for c in reported for n in c.services} == {"web.shop", "db.data"}
    assert [n for c in reported for n in c.removed] == ["api.shop"]
    # Nothing lost: what the subscriber holds is what a fresh list gives.
    fresh = Subscriber()
    other = KubernetesSource(kube.kubeconfig())
    other.start(fresh)
    other.stop()
    assert subscriber.state() == fresh.state()
    assert subscriber.addrs("web.shop") == ["10.244.1.11:8080", "10.244.2.12:8080"]


def test_the_api_server_down_keeps_the_state_and_back_resumes_from_the_version(source, kube, log):
    _, subscriber = source()
    watching(kube)
    kube.stop()
    wait_until(
        lambda: log.has("endpointslices:", "failure 2 in a row", "last known state kept"), what="retries"
    )
    assert subscriber.state() == RECORDED

    web = slice_of(kube, "shop", "web-m9q4z")
    web["endpoints"][0]["addresses"] = ["10.244.3.22"]
    kube.apply(SLICES, "MODIFIED", web)  # while down: in the history the resumed watch replays
    kube.start()
    wait_until(lambda: "10.244.3.22:8080" in subscriber.addrs("web.shop"), what="the change after the outage")
    wait_until(lambda: log.has("watching endpointslices again from resourceVersion 1000"), what="resume line")
    # Resumed from the version it had: no second list.
    assert len(kube.requested(SLICES, limit="500")) == 1
    assert kube.requested(SLICES, watch="true", resourceVersion="1000")


def test_start_fails_with_a_clear_error_when_the_api_server_cannot_be_listed(kube, tmp_path):
    kubeconfig = kube.kubeconfig()
    wrong = kube.kubeconfig(token="wrong", name="wrong-token")
    with pytest.raises(ConfigError, match=r"--kubernetes .*wrong-token: cannot list .*: 401 Unauthorized"):
        KubernetesSource(wrong).start(Subscriber())
    kube.stop()
    with pytest.raises(ConfigError, match=f"cannot list Services and EndpointSlices from {kube.url}"):
        KubernetesSource(kubeconfig, start_timeout=5).start(Subscriber())


def test_a_bad_kubeconfig_is_a_config_error_naming_it(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="kubeconfig .*missing.yaml: no such file"):
        KubernetesSource(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match="kubeconfig .*empty.yaml"):
        KubernetesSource(empty)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="kubeconfig in-cluster"):
        KubernetesSource("in-cluster")
    monkeypatch.setitem(sys.modules, "lightkube", None)
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[kubernetes\]'"):
        KubernetesSource(empty)


def test_tokenreview_answers_the_workload_none_or_an_error(kube):
    reviewer = TokenReviewer(kube.kubeconfig())
    try:
        assert reviewer.name_for("token-web") == "shop/web"
        assert reviewer("token-web") == "shop/web"  # the callable the identity service takes
        assert reviewer.name_for("token-alice") is None  # authenticated, but a person, not a workload
        assert reviewer.name_for("forged") is None
        assert reviewer.name_for("") is None
        assert sum(1 for m, _, _ in kube.requests if m == "POST") == 4  # the empty token asks nobody

        kube.forbid_tokenreviews = True
        with pytest.raises(MeshcoreError, match="TokenReview at https://127.0.0.1:.*: 403 .*forbidden"):
            reviewer.name_for("token-web")
        kube.forbid_tokenreviews = False
        kube.stop()
        with pytest.raises(MeshcoreError, match="TokenReview at https://127.0.0.1"):
            reviewer.name_for("token-web")
        kube.start()
        assert reviewer.name_for("token-web") == "shop/web"
    finally:
        reviewer.close()
    wrong = TokenReviewer(kube.kubeconfig(token="wrong", name="wrong-token"))
    with pytest.raises(MeshcoreError, match="401 Unauthorized"):
        wrong.name_for("token-web")


def test_tokenreview_with_audiences_takes_only_tokens_meant_for_them(kube):
    """A projected token for `meshcore` is accepted when the reviewer asks for that audience, and
    the API server's own kind of token is not; an API server that ignores the audiences asked is
    caught by status.audiences."""
    for_meshcore = TokenReviewer(kube.kubeconfig(), audiences=["meshcore"])
    plain = TokenReviewer(kube.kubeconfig())
    try:
        assert for_meshcore.name_for("token-web-meshcore") == "shop/web"
        assert for_meshcore.name_for("token-web") is None  # minted for the API server
        assert plain.name_for("token-web-meshcore") is None  # minted for meshcore, not the API
        assert plain.name_for("token-web") == "shop/web"
        kube.ignore_audiences = True
        assert for_meshcore.name_for("token-web") is None
        assert kube.reviews["token-web"]["authenticated"], "the server did authenticate it"
    finally:
        for_meshcore.close()
        plain.close()


def test_workload_names_come_only_from_service_account_usernames():
    assert workload_name("system:serviceaccount:shop:web") == "shop/web"
    assert workload_name("system:serviceaccount:shop") is None
    assert workload_name("system:serviceaccount::web") is None
    assert workload_name("system:serviceaccount:a:b:c") is None
    assert workload_name("system:node:node-a1") is None
    assert workload_name("alice") is None


def test_control_serve_with_kubernetes_end_to_end(kube, tmp_path):
    proc = subprocess.Popen(
        [*MESHCORE, "control", "serve", "--kubernetes", str(kube.kubeconfig()), "--cluster", "east"]
        + ["--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        serving = proc.stdout.readline()
        match = re.match(r"meshcore-control: serving on (\S+)", serving)
        assert match, f"no serving line: {serving!r}"
        ready = proc.stdout.readline()
        assert f"ready (3 services from kubernetes {kube.url}" in ready, ready

        updates: list[dict[str, Any]] = []
        sub = Subscription(f"http://{match.group(1)}", ["web.shop", "db.data"], updates.append)
        sub.start()
        try:
            assert sub.wait_synced(15)
            state = sub.state()
            assert [e["addr"] for e in state["web.shop"]["endpoints"]] == [e["addr"] for e in WEB]
            assert {e["cluster"] for e in state["web.shop"]["endpoints"]} == {"east"}
            assert state["db.data"]["exists"] and state["db.data"]["endpoints"] == []

            wait_until(lambda: kube.open_watches(SLICES) == 1, what="the control plane watching")
            web = slice_of(kube, "shop", "web-m9q4z")
            web["endpoints"][0]["conditions"]["ready"] = False
            kube.apply(SLICES, "MODIFIED", web)
            wait_until(
                lambda: len(sub.state()["web.shop"]["endpoints"]) == 2,
                what="the not-ready pod leaving the proxy",
            )
        finally:
            sub.stop()
    finally:
        proc.kill()
        proc.wait(10)


def test_control_serve_refuses_a_namespace_without_kubernetes(tmp_path):
    out = subprocess.run(
        [*MESHCORE, "control", "serve", "--dir", str(tmp_path), "--kubernetes-namespace", "shop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "--kubernetes-namespace needs --kubernetes KUBECONFIG" in out.stderr
