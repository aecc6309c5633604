"""Hosts in network namespaces (meshcore.netns): hosts in zones and clusters
reach each other through their routers, each class of destination gets its
delay, the kernel's counters see bytes on the boundary they crossed, and
nothing is left behind, even by a run that was killed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns_helpers import LATENCY, require_netns

from conftest import OutputLines, wait_until
from meshcore.errors import ConfigError
from meshcore.netns import Network, sweep
from meshcore.netns.network import _namespaces

ROOT = Path(__file__).resolve().parent.parent


def serve_files(host, directory: Path, port: int = 8080) -> str:
    """A Python HTTP server on the host; returns its URL once it answers."""
    host.popen(
        [sys.executable, "-m", "http.server", "--bind", host.addr, "--directory", str(directory), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{host.addr}:{port}/"
    wait_until(
        lambda: host.run(["curl", "-sf", "-o", "/dev/null", url], check=False).returncode == 0,
        what=f"the HTTP server on {host.name}",
    )
    return url


def fetch(client, url: str) -> str:
    return client.run(["curl", "-sS", "--fail", "-m", "20", url]).stdout


def mesh(net: Network):
    """Two zones in cluster east, one zone in west; zone-a is in both clusters."""
    return (
        net.host("web", zone="zone-a", cluster="east"),
        net.host("web2", zone="zone-a", cluster="east"),
        net.host("api", zone="zone-b", cluster="east"),
        net.host("db", zone="zone-a", cluster="west"),
    )


def test_hosts_in_two_zones_and_two_clusters_reach_each_other(network, tmp_path):
    hosts = mesh(network)
    # The plan: 10.(200 + cluster).(zone).(host + 1).
    assert [h.addr for h in hosts] == ["10.200.1.2", "10.200.1.3", "10.200.2.2", "10.201.1.2"]
    urls = {}
    for h in hosts:
        (tmp_path / h.name).mkdir()
        (tmp_path / h.name / "name").write_text(f"{h.name}\n")
        urls[h.name] = serve_files(h, tmp_path / h.name)
    for client in hosts:
        for server in hosts:
            if server is not client:
                assert fetch(client, urls[server.name] + "name") == f"{server.name}\n"
    # Loopback is up, and a host routes everything via its router.
    assert "default via 10.200.1.1" in hosts[0].run(["ip", "route"]).stdout
    assert hosts[0].run(["ip", "-o", "link", "show", "lo"]).stdout.count("UP") >= 1


def test_each_class_of_destination_has_its_delay(network, tmp_path):
    web, web2, api, db = mesh(network)
    zone = web.zone
    rules = zone.run(["iptables", "-S", "FORWARD"]).stdout
    # From a host to: a host of the zone, a zone of the cluster, another cluster.
    for out, queue in (("h+", 1), ("xz+", 2), ("xc+", 3)):
        assert f"-A FORWARD -i h+ -o {out} -j NFQUEUE --queue-num {queue}" in rules
    # The links are named by class, and each queue is held by the delay process.
    links = zone.run(["ip", "-o", "link"]).stdout
    assert f"xz{api.zone.index}@" in links and f"xc{db.zone.index}@" in links
    assert set(zone.delayed_packets()) == {"same-zone", "cross-zone", "cross-cluster"}
    assert network.delay_us == {"same-zone": 1000, "cross-zone": 5000, "cross-cluster": 30000}

    # Packets to each class go through that class's queue, and only that one.
    (tmp_path / "f").write_text("x")
    for server, klass in ((web2, "same-zone"), (api, "cross-zone"), (db, "cross-cluster")):
        url = serve_files(server, tmp_path)
        before = zone.delayed_packets()
        fetch(web, url + "f")
        after = zone.delayed_packets()
        grown = {k for k in after if after[k] > before[k]}
        assert grown == {klass}, f"web -> {server.name}: {before} -> {after}"


def test_a_network_without_latency_delays_nothing():
    require_netns()
    with Network() as net:
        h = net.host("a")
        assert "NFQUEUE" not in h.zone.run(["iptables", "-S", "FORWARD"]).stdout
        pids = subprocess.run(["ip", "netns", "pids", h.zone.ns], capture_output=True, text=True).stdout
        assert pids == "", "no delay process"


def test_bytes_are_counted_on_the_boundary_they_cross(network, tmp_path):
    web, web2, api, db = mesh(network)
    n = 2 * 1024 * 1024
    (tmp_path / "big").write_bytes(os.urandom(n))
    url = serve_files(api, tmp_path)  # zone-b; web fetches it from zone-a
    link = network.bytes_between("east/zone-a", "east/zone-b")
    boundary = network.boundary_bytes()
    web_before, web2_before, db_before = web.bytes(), web2.bytes(), db.bytes()

    size = web.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url + "big"]).stdout
    assert int(size) == n

    crossed = network.bytes_between("east/zone-a", "east/zone-b")
    assert crossed.received - link.received >= n  # into zone-a from zone-b
    assert crossed.sent - link.sent < n // 20  # the request and the ACKs only
    # Seen from zone-b's end, the same bytes left it (and maybe a last ACK, still in its delay).
    assert network.bytes_between("east/zone-b", "east/zone-a").sent >= crossed.received
    assert web.bytes().received - web_before.received >= n
    after = network.boundary_bytes()
    assert after["cross-zone"] - boundary["cross-zone"] >= n
    assert after["cross-cluster"] - boundary["cross-cluster"] < n // 100
    # Hosts not in the transfer see none of it.
    assert web2.bytes().total - web2_before.total < n // 100
    assert db.bytes().total - db_before.total < n // 100


def test_zones_are_named_by_cluster_where_a_name_is_in_two(network):
    mesh(network)
    with pytest.raises(ConfigError, match="in more than one cluster"):
        network.bytes_between("zone-a", "zone-b")
    assert network.zone("zone-b").key == "east/zone-b"
    with pytest.raises(ConfigError, match="no such zone"):
        network.zone("zone-z")
    with pytest.raises(ConfigError, match="there is one by that name"):
        network.host("web", zone="zone-b", cluster="east")


def test_bad_latency_is_named():
    with pytest.raises(ConfigError, match="unknown class 'cross-region'"):
        Network(latency={"cross-region": "50ms"})
    with pytest.raises(ConfigError, match="latency.cross-zone: '5' is not a delay"):
        Network(latency={"cross-zone": "5"})


def test_run_and_popen_as_another_user(network):
    host = network.host("app")
    assert host.run(["id", "-u"], user=1337).stdout == "1337\n"
    proc = host.popen(["id", "-u"], user=1337, stdout=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=10)[0] == "1337\n"
    # Really unprivileged: root's capabilities went with the uid.
    denied = host.run(["ip", "link", "add", "d0", "type", "dummy"], user=1337, check=False)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr
    # A sidecar's proxy is Python: readable to its uid with the one capability that
    # lets it through a private home directory (where pyenv may keep Python).
    me = [sys.executable, "-c", "import os, meshcore; print(os.getuid(), os.getgid())"]
    assert host.run(me, user=1337, group=1400, caps=["dac_read_search"]).stdout == "1337 1400\n"


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


def test_cleanup_leaves_nothing_even_when_the_body_raises():
    require_netns()
    links = root_links()
    with pytest.raises(RuntimeError, match="the test failed"):
        with Network(latency=LATENCY) as net:
            a = net.host("a", zone="zone-a")
            net.host("b", zone="zone-b")
            sleeper = a.popen(["sleep", "600"])
            # Not started with popen: found in the namespace and killed all the same.
            stray = int(a.run("sleep 600 >/dev/null 2>&1 & echo $!").stdout)
            assert len([ns for ns in _namespaces() if ns.startswith(net.prefix)]) == 4
            raise RuntimeError("the test failed")
    assert [ns for ns in _namespaces() if ns.startswith(net.prefix)] == []
    assert sleeper.poll() is not None
    wait_until(lambda: not os.path.exists(f"/proc/{stray}"), what="the stray process to go")
    assert root_links() == links, "nothing was made in the root namespace"
    with pytest.raises(Exception, match="closed"):
        net.host("c")


KILLED_RUN = """
from meshcore.netns import Network
net = Network(latency={"cross-zone": "5ms"})
net.host("a", zone="zone-a")
net.host("b", zone="zone-b")
print(net.prefix, flush=True)
import signal
signal.pause()  # until the test kills this run
"""


def test_sweep_removes_what_a_killed_run_left():
    require_netns()
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, text=True)
    prefix = OutputLines(child.stdout).wait_for(r"^mcnet-", timeout=30).strip()
    child.kill()  # no atexit, no __exit__: its namespaces and delay processes stay
    child.wait()
    left = [ns for ns in _namespaces() if ns.startswith(prefix)]
    assert len(left) == 4
    delayers = [
        int(p)
        for ns in left
        for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    ]
    assert delayers, "the delay processes outlived their run"

    with Network() as live:
        live.host("mine")
        # A test run beside this one may sweep them first: that is sweep() too.
        gone = set(left) - set(_namespaces())
        swept = {ns for ns in sweep() if ns.startswith(prefix)}
        assert swept | gone == set(left)
        assert [ns for ns in _namespaces() if ns.startswith(live.prefix)] != [], "a live run is left alone"
    assert [ns for ns in _namespaces() if ns.startswith(prefix)] == []
    for pid in delayers:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), what=f"process {pid} to go")


def test_the_fixture_skips_where_it_cannot_run_and_fails_under_ci(tmp_path):
    """A machine without iproute2 (no `ip` on PATH) cannot build a Network."""
    require_netns()
    test = f"{Path(__file__).name}::test_run_and_popen_as_another_user"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)  # python is run by its full path
    argv = [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"]
    skipped = subprocess.run(argv, cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=120)
    assert "1 skipped" in skipped.stdout, skipped.stdout
    assert "ip is not installed (Debian package iproute2)" in skipped.stdout, skipped.stdout
    failed = subprocess.run(argv, cwd=ROOT / "tests", env={**env, "CI": "1"}, capture_output=True, text=True)
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout  # failed in setup
    assert "CI must run the network namespace tests" in failed.stdout, failed.stdout
