"""The DNS source of the control plane (#18): `control serve --dns` against a real DNS server on
loopback (tests/dns_helpers.py) whose records the tests change, followed by a `Subscription`."""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_helpers import MESHCORE, ControlPlane, service_toml, write
from dns_helpers import DnsServer

from conftest import wait_until
from meshcore.control.client import Subscription
from meshcore.control.sources.dns import DnsService, parse_dns_flag, parse_dns_server
from meshcore.errors import ConfigError

PROXY = {"id": "test-proxy", "version": "0.1.0", "zone": "zone-a", "cluster": None}


@pytest.fixture
def server() -> Iterator[DnsServer]:
    s = DnsServer().start()
    s.set("web.internal", "A", 1, "10.0.0.2", "10.0.0.1")
    s.set("web.internal", "AAAA", 1, "fd00::1")
    # Two targets in the lowest priority, and a backup (priority 20) that is not served.
    s.set(
        "_http._tcp.api.internal",
        "SRV",
        1,
        "10 5 8080 api-1.internal.",
        "10 3 8081 api-2.internal.",
        "20 1 9000 backup.internal.",
    )
    s.set("api-1.internal", "A", 1, "10.1.0.1")
    s.set("api-2.internal", "A", 1, "10.1.0.2", "10.1.0.3")
    s.set("backup.internal", "A", 1, "10.9.0.1")
    s.set("idle.internal", "TXT", 1, '"exists, with no addresses"')
    yield s
    s.stop()


@pytest.fixture
def control() -> Iterator[Any]:
    started: list[ControlPlane] = []

    def make(server: DnsServer, *queries: str, docs: Path | None = None) -> ControlPlane:
        flags = [f for q in queries for f in ("--dns", q)]
        plane = ControlPlane(docs, extra=[*flags, "--dns-server", server.addr])
        started.append(plane)
        return plane

    yield make
    for plane in started:
        plane.kill()


class Updates:
    """A Subscription's on_update calls, in order."""

    def __init__(self) -> None:
        self.calls: queue.Queue[list[dict[str, Any]]] = queue.Queue()

    def __call__(self, changed: list[dict[str, Any]]) -> None:
        self.calls.put(changed)

    def next(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.calls.get(timeout=15)}


@pytest.fixture
def follow() -> Iterator[Any]:
    subs: list[Subscription] = []

    def make(plane: ControlPlane, services: list[str]) -> tuple[Subscription, Updates]:
        updates = Updates()
        sub = Subscription(f"http://{plane.addr}", services, updates, proxy_info=PROXY).start()
        subs.append(sub)
        assert sub.wait_synced(15)
        return sub, updates

    yield make
    for sub in subs:
        sub.stop()


def addrs(resource: dict[str, Any]) -> list[str]:
    return [e["addr"] for e in resource["endpoints"]]


WEB = "web=web.internal:8080"
API = "api=srv:_http._tcp.api.internal"


def test_a_aaaa_and_srv_records_are_served_and_pushed(server, control, follow):
    plane = control(
        server, f"{WEB},zone=zone-b,cluster=east", API, "idle=idle.internal:80", "gone=gone.internal:80"
    )
    _, updates = follow(plane, ["web", "api", "idle", "gone"])
    first = updates.next()
    web = first["web"]
    # Every A and AAAA address at the given port, in a stable order; zone and cluster as named.
    assert addrs(web) == ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]
    assert {(e["zone"], e["cluster"], e["weight"]) for e in web["endpoints"]} == {("zone-b", "east", 1)}
    # SRV: each target's addresses at the record's port and weight; priority 20 is not served.
    api = first["api"]
    assert [(e["addr"], e["weight"], e["zone"]) for e in api["endpoints"]] == [
        ("10.1.0.1:8080", 5, None),
        ("10.1.0.2:8081", 3, None),
        ("10.1.0.3:8081", 3, None),
    ]
    # NOERROR without addresses: exists with none. NXDOMAIN: does not exist.
    assert first["idle"]["exists"] is True and first["idle"]["endpoints"] == []
    assert first["gone"]["exists"] is False


def test_a_changed_record_reaches_the_subscriber_when_its_ttl_runs_out(server, control, follow):
    plane = control(server, WEB, API)
    sub, updates = follow(plane, ["web", "api"])
    updates.next()

    server.set("web.internal", "A", 1, "10.0.0.3")
    web = updates.next()
    assert list(web) == ["web"] and addrs(web["web"]) == ["10.0.0.3:8080", "[fd00::1]:8080"]

    # An SRV target's address changes: its own TTL brings it in.
    server.set("api-1.internal", "A", 1, "10.1.0.9")
    api = updates.next()["api"]
    assert addrs(api) == ["10.1.0.2:8081", "10.1.0.3:8081", "10.1.0.9:8080"]
    # The SRV set changes: a new target is asked and served, one that left is dropped.
    server.set("api-3.internal", "A", 1, "10.1.0.7")
    # A target that does not exist adds nothing, and is logged.
    server.set(
        "_http._tcp.api.internal",
        "SRV",
        1,
        "10 2 7000 api-3.internal.",
        "10 1 7001 ghost.internal.",
        "20 1 9000 backup.internal.",
    )
    api = updates.next()["api"]
    assert [(e["addr"], e["weight"]) for e in api["endpoints"]] == [("10.1.0.7:7000", 2)]
    wait_until(
        lambda: plane.logged("dns: SRV target ghost.internal does not exist (NXDOMAIN)"),
        what="the missing target logged",
    )
    assert sub.state()["web"]["version"] == 2


def test_nxdomain_removes_the_service_and_it_comes_back(server, control, follow):
    plane = control(server, WEB)
    _, updates = follow(plane, ["web"])
    assert updates.next()["web"]["exists"]

    server.delete("web.internal")
    web = updates.next()["web"]
    assert web["exists"] is False and web["endpoints"] == []
    wait_until(
        lambda: plane.logged("dns: web: web.internal does not exist (NXDOMAIN); service removed"),
        what="the removal logged",
    )

    server.set("web.internal", "A", 1, "10.0.0.5")
    web = updates.next()["web"]
    assert web["exists"] is True and addrs(web) == ["10.0.0.5:8080"]


def test_a_resolver_outage_keeps_the_endpoints_and_resolution_resumes(server, control, follow):
    plane = control(server, WEB, API)
    sub, updates = follow(plane, ["web", "api"])
    updates.next()
    known = sub.state()

    server.stop()
    wait_until(
        lambda: plane.logged("dns: web.internal A/AAAA: timed out; keeping its last answer"),
        timeout=20,
        what="the outage logged",
    )
    wait_until(
        lambda: plane.logged("dns: _http._tcp.api.internal SRV: timed out"), timeout=20, what="SRV too"
    )
    assert sub.state() == known and updates.calls.empty()

    server.set("web.internal", "A", 1, "10.0.0.4")
    server.start()
    # The first news after the outage is the change made meanwhile: nothing was emptied before it.
    web = updates.next()
    assert list(web) == ["web"] and addrs(web["web"]) == ["10.0.0.4:8080", "[fd00::1]:8080"]
    wait_until(lambda: plane.logged("dns: web.internal A/AAAA: answered again"), what="the recovery logged")
    assert sub.state()["api"] == known["api"]


def test_servfail_keeps_the_endpoints_and_is_logged_once(server, control, follow):
    plane = control(server, WEB)
    sub, updates = follow(plane, ["web"])
    updates.next()
    known = sub.state()

    server.servfail = True
    asked = server.asked[("web.internal.", "A")]
    # Retried with backoff (1 s, then 2 s): three more questions, all failed.
    server.wait_asked("web.internal", "A", asked + 3)
    failures = [line for line in plane.log if "web.internal A/AAAA" in line and "SERVFAIL" in line]
    assert len(failures) == 1, plane.log
    assert f"127.0.0.1@{server.port} answered SERVFAIL; keeping its last answer" in failures[0]
    assert sub.state() == known and updates.calls.empty()

    server.set("web.internal", "A", 1, "10.0.0.6")
    server.servfail = False
    assert addrs(updates.next()["web"]) == ["10.0.0.6:8080", "[fd00::1]:8080"]


def test_a_name_without_answer_at_start_is_served_once_it_answers(server, control, follow):
    server.stop()
    plane = control(server, WEB)  # ready once the first question timed out
    wait_until(
        lambda: plane.logged("dns: web.internal A/AAAA: timed out; not served until it answers"),
        what="the first failure logged",
    )
    _, updates = follow(plane, ["web"])
    assert updates.next()["web"]["exists"] is False

    server.start()
    web = updates.next()["web"]
    assert web["exists"] is True and addrs(web) == ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]


def test_dns_and_a_directory_serve_side_by_side_the_directory_first(server, control, follow, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    write(docs / "web.toml", service_toml("web", "10.5.0.1:80"))
    plane = control(server, WEB, API, docs=docs)
    _, updates = follow(plane, ["web", "api"])
    first = updates.next()
    assert addrs(first["web"]) == ["10.5.0.1:80"]  # the directory reported it first and keeps it
    assert len(first["api"]["endpoints"]) == 3
    wait_until(
        lambda: plane.logged("service 'web' from dns set aside: directory serves it"),
        what="the conflict logged",
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("web", "expected NAME=HOST:PORT or NAME=srv:QNAME"),
        ("=web.internal:80", "service name '' must be"),
        ("web=web.internal", "expected HOST:PORT (A/AAAA) or srv:QNAME (SRV)"),
        ("web=web.internal:0", "port '0' must be a number from 1 to 65535"),
        ("web=web.internal:http", "port 'http' must be a number"),
        ("web=10.0.0.1:80", "'10.0.0.1' is an address, not a name"),
        ("web=bad..name:80", "'bad..name' is not a DNS name"),
        ("api=srv:", "'' is not a DNS name"),
        ("web=web.internal:80,zone", "option 'zone': expected zone=ZONE or cluster=CLUSTER"),
        ("web=web.internal:80,region=x", "option 'region=x'"),
        ("web=web.internal:80,zone=a,zone=b", "zone given twice"),
    ],
)
def test_a_bad_dns_flag_is_refused_naming_the_flag_and_reason(value, reason):
    with pytest.raises(ConfigError) as refused:
        parse_dns_flag(value)
    assert str(refused.value).startswith(f"--dns {value}: ") and reason in str(refused.value)


def test_dns_flags_and_servers_parse():
    assert parse_dns_flag("web=Web.Internal.:8080,cluster=east") == DnsService(
        "web", "Web.Internal", 8080, cluster="east"
    )
    assert parse_dns_flag("api=srv:_http._tcp.api") == DnsService("api", "_http._tcp.api", None)
    assert parse_dns_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_dns_server("[::1]:53") == ("::1", 53)
    assert parse_dns_server("10.0.0.53") == ("10.0.0.53", 53)
    with pytest.raises(ConfigError, match="--dns-server dns.google:53: 'dns.google' must be an IP address"):
        parse_dns_server("dns.google:53")


def test_the_cli_refuses_bad_dns_flags_before_serving(server):
    def serve(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MESHCORE, "control", "serve", *flags], capture_output=True, text=True, timeout=30
        )

    r = serve("--dns", "web=web.internal", "--dns-server", server.addr)
    assert (
        r.returncode == 1
        and "ConfigError: --dns web=web.internal: 'web.internal': expected HOST:PORT" in r.stderr
    )
    r = serve("--dns", "web=web.internal:80", "--dns", "web=other.internal:80", "--dns-server", server.addr)
    assert r.returncode == 1 and "service 'web' is named twice" in r.stderr
    r = serve("--dns-server", server.addr)
    assert r.returncode == 1 and "--dns-server given without --dns" in r.stderr
    r = serve("--dns", "web=web.internal:80", "--dns-server", "localhost:53")
    assert r.returncode == 1 and "'localhost' must be an IP address" in r.stderr
    assert server.asked == {}  # refused before any question


def test_the_source_reports_everything_before_start_returns_and_stops_its_thread(server):
    from meshcore.control.sources.dns import DnsSource

    reported: list[Any] = []
    source = DnsSource([parse_dns_flag(WEB), parse_dns_flag(API)], parse_dns_server(server.addr))
    source.start(reported.append)
    try:
        # One report with both, the SRV's targets already asked: the first snapshot is complete.
        assert len(reported) == 1 and set(reported[0].services) == {"web", "api"}
        assert len(reported[0].services["api"]) == 3
        assert source.describe() == f"dns (2 names via {server.addr})"
    finally:
        source.stop()
    assert source._thread is not None and not source._thread.is_alive()


def test_without_dnspython_the_flag_says_which_extra_to_install(tmp_path):
    # dnspython made unimportable in a fresh interpreter, as where the extra is not installed.
    script = (
        "import sys; sys.modules['dns'] = None\n"
        "from meshcore.cli import main\n"
        "sys.exit(main(['control', 'serve', '--dns', 'web=web.internal:80']))\n"
    )
    r = subprocess.run([MESHCORE[0], "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "ConfigError: --dns needs dnspython: pip install 'meshcore[dns]'" in r.stderr
