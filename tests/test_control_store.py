"""The control plane's store when several sources feed it: one owner per service, handed on."""

from __future__ import annotations

import logging

from meshcore.control.sources import Changes, endpoint
from meshcore.control.store import Store


def test_a_service_belongs_to_the_first_source_and_passes_on_when_it_drops_it(caplog) -> None:
    store = Store()
    seen: list[tuple[str, int, bool]] = []
    store.watch(lambda _rev, states: seen.extend((s.name, s.version, s.exists) for s in states))
    dns, k8s = store.feed("dns"), store.feed("kubernetes")

    dns(Changes(services={"web": [endpoint("10.0.0.1:80")]}))
    with caplog.at_level(logging.ERROR, logger="meshcore.control"):
        k8s(Changes(services={"web": [endpoint("10.0.0.2:80")]}))
        k8s(Changes(services={"web": [endpoint("10.0.0.3:80")]}))
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.0.0.1:80"]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["service 'web' from kubernetes set aside: dns serves it"]

    dns(Changes(removed=["web"]))  # the second source's latest report takes over
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.0.0.3:80"]
    dns(Changes(services={"web": [endpoint("10.0.0.1:80")]}))  # and gives it back
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.0.0.1:80"]
    dns(Changes(removed=["web"]))
    k8s(Changes(removed=["web"]))
    assert not store.get("web").exists
    assert seen == [("web", 1, True), ("web", 2, True), ("web", 3, True), ("web", 4, True), ("web", 5, False)]


def test_a_source_cannot_remove_a_service_it_does_not_serve() -> None:
    store = Store()
    store.feed("dir")(Changes(services={"api": [endpoint("10.0.0.1:80")]}))
    assert store.feed("dns")(Changes(removed=["api"])) == []
    assert store.get("api").exists and store.get("api").version == 1


def test_a_link_adds_its_endpoints_after_the_owners() -> None:
    store = Store()
    local, west = store.feed("directory"), store.feed("link:west", adds=True)
    west(
        Changes(services={"web": [endpoint("10.1.0.1:80", cluster="west")], "api": [endpoint("10.1.0.2:80")]})
    )
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.1.0.1:80"], "only the link has it"
    local(Changes(services={"web": [endpoint("10.0.0.1:80", zone="a")]}))
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.0.0.1:80", "10.1.0.1:80"]
    local(Changes(services={"web": []}))  # none here now: the other cluster's still serve
    assert [e["addr"] for e in store.get("web").endpoints] == ["10.1.0.1:80"]
    west(Changes(removed=["web"]))
    assert store.get("web").exists and store.get("web").endpoints == ()
    assert [e["addr"] for e in store.get("api").endpoints] == ["10.1.0.2:80"]
