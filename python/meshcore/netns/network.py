"""Hosts in network namespaces: a network built inside this machine, for the
sidecar tests, the benchmarks and `meshcore demo --mesh`. It needs root.

    with Network(latency={"same-zone": "1ms", "cross-zone": "5ms", "cross-cluster": "30ms"}) as net:
        web = net.host("web", zone="zone-a", cluster="east")
        api = net.host("api", zone="zone-b", cluster="east")
        api.popen(["python", "-m", "http.server", "80"])
        web.run(["curl", "-s", f"http://{api.addr}/"])
        net.bytes_between("zone-a", "zone-b")  # Bytes(sent=..., received=...)

Shape. Each zone has a router, a namespace of its own; each host of the zone is
a namespace joined to it by a veth pair, and routers are joined pairwise by one
veth link per pair of zones (a full mesh: there are few zones). Everything is
routed, even between two hosts of one zone, so every packet passes a router,
where its delay is applied. Why routers rather than one bridge: a zone boundary
is then a real interface, so the kernel's own counters on it are the bytes that
crossed it, and which delay a packet gets follows from the interfaces it goes
in and out of, with no filters classifying packets by address.

Address plan (IPv4, 10.200.0.0/13). Cluster c (0, 1, ... in order of first use)
is 10.(200+c).0.0/16; its zone z (1, 2, ...) is 10.(200+c).z.0/24, the router
.1 and the hosts .2, .3, ... So 10.201.2.3 is the second host of the second zone
of the second cluster. A host has loopback up, its address on eth0 and a
default route via its router: an address outside the plan (a service's virtual
address, say) is routable, so iptables can redirect it, and a connection that is
not redirected is refused at once (the router answers "network unreachable").

Latency. The values are one-way delays between two hosts (a round trip takes
twice as long), applied once, by the router a packet reaches first: its
iptables FORWARD chain sends what comes in from a host (`-i h+`) to NFQUEUE
queue 1 if it goes out to a host of the zone (`-o h+`), 2 if to a zone of the
cluster (`-o xz+`), 3 if to another cluster (`-o xc+`); a small process in the
router's namespace (`delay.py`) holds each queue's packets for its delay, and
`zone.delayed_packets()` counts what each queue took (should it die, its
packets are dropped, not let through undelayed). Not
`tc netem`: the kernels this runs on in CI are built without it (nor prio).

Processes. `host.run(cmd)` and `host.popen(cmd)` run `ip netns exec` around
`cmd`; with `user=UID` it runs as that uid (setpriv, root's capabilities gone,
but `caps=[...]` keeps the ones named), as a sidecar's proxy must.

Bytes. Read from /sys/class/net/<if>/statistics/{rx,tx}_bytes inside the router's
namespace: whole frames (Ethernet, IP and TCP headers counted). `host.bytes()`
is what a host sent and received (its veth, at the router's end);
`net.bytes_between(a, b)` is what crossed the link between zones a and b;
`net.boundary_bytes()` sums all links into cross-zone and cross-cluster. IPv6 is
off on these interfaces, so nothing but the traffic you make (and ARP) is counted.

Cleanup. Every namespace is named `mcnet-<pid>-<start time>-<n>-...`. Leaving
the `with` block (or `close()`) stops processes started with `popen`, kills any
other process left in the namespaces and deletes them; their interfaces go with
them (nothing is made in the root namespace). An atexit handler closes networks
left open, and `sweep()` deletes what runs that are gone (a killed test) left.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

from ..errors import ConfigError, MeshcoreError

__all__ = ["Network", "Host", "Zone", "Bytes", "NetnsError", "sweep", "unavailable", "LATENCY_CLASSES"]

PREFIX = "mcnet-"
LATENCY_CLASSES = ("same-zone", "cross-zone", "cross-cluster")
MAX_CLUSTERS = 8  # 10.200 .. 10.207
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s)\s*$")
_UNIT_US = {"us": 1, "ms": 1000, "s": 1_000_000}
# The NFQUEUE queue of each class of delay (see delay.py).
_QUEUE = {"same-zone": 1, "cross-zone": 2, "cross-cluster": 3}
_OUT = {"same-zone": "h+", "cross-zone": "xz+", "cross-cluster": "xc+"}

Command = Union[str, list[str]]


class NetnsError(MeshcoreError):
    """A command building or running the network failed."""


class Bytes(NamedTuple):
    sent: int
    received: int

    @property
    def total(self) -> int:
        return self.sent + self.received


def _start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot), which tells a live pid
    from a reused one; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _run_prefix() -> str:
    """This process's part of the names (computed each time: a forked child is another run)."""
    return f"{PREFIX}{os.getpid()}-{_start_time(os.getpid())}-"


_RUN_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-")
_counter = itertools.count()
_open: set[Network] = set()


def _cmd(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{what}: `{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _delay_us(klass: str, value: object) -> int:
    m = _DELAY.match(value) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"latency.{klass}: {value!r} is not a delay such as '1ms', '500us' or '0.03s'")
    return round(float(m.group(1)) * _UNIT_US[m.group(2)])


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{kind} {name!r}: use letters, digits, '.', '_' and '-' (at most 40)")


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _delete_namespace(ns: str) -> None:
    """Kills what still runs in it (a namespace lives on while a process is in
    it), then deletes it; its interfaces, and their veth peers, go with it."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Namespace:
    """A network namespace commands run in."""

    def __init__(self, ns: str):
        self.ns = ns
        self._procs: list[subprocess.Popen[Any]] = []

    def argv(
        self,
        cmd: Command,
        user: Union[int, str, None] = None,
        group: Optional[int] = None,
        caps: Sequence[str] = (),
    ) -> list[str]:
        """`ip netns exec` (which also shows this namespace's /sys/class/net)
        around `cmd` (a string runs in sh), as `user` if given, keeping the
        capabilities named in `caps` (e.g. "dac_read_search": where Python lives
        under /root, mode 700, another uid cannot start it without)."""
        args = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is None:
            return ["ip", "netns", "exec", self.ns, *args]
        try:
            entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            if isinstance(user, str):
                raise ConfigError(f"user {user!r}: no such user") from None
            uid, gid = user, user  # a bare uid, as a sidecar's proxy runs
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid if group is None else group}", "--clear-groups"]
        if caps:
            keep = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in caps)
            drop += [f"--inh-caps={keep}", f"--ambient-caps={keep}"]
        return ["ip", "netns", "exec", self.ns, *drop, *args]

    def run(
        self,
        cmd: Command,
        *,
        user: Union[int, str, None] = None,
        group: Optional[int] = None,
        caps: Sequence[str] = (),
        check: bool = True,
        timeout: float = 60,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Runs `cmd` here to its end; output is captured as text unless told
        otherwise. With `check`, a non-zero exit raises NetnsError with stderr."""
        kwargs.setdefault("text", True)
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        done = subprocess.run(self.argv(cmd, user, group, caps), timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise NetnsError(f"{self.ns}: {cmd!r} exited {done.returncode}: {(done.stderr or '').strip()}")
        return done

    def popen(
        self,
        cmd: Command,
        *,
        user: Union[int, str, None] = None,
        group: Optional[int] = None,
        caps: Sequence[str] = (),
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Starts `cmd` here, in its own process group; it is stopped when the
        network closes."""
        proc = subprocess.Popen(self.argv(cmd, user, group, caps), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def counters(self, dev: str) -> Bytes:
        """(tx, rx) bytes of `dev` in this namespace, from /sys/class/net."""
        stats = f"/sys/class/net/{dev}/statistics"
        tx, rx = self.run(["cat", f"{stats}/tx_bytes", f"{stats}/rx_bytes"]).stdout.split()
        return Bytes(sent=int(tx), received=int(rx))

    def _stop(self, grace: float) -> None:
        for proc in self._procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Zone(Namespace):
    """A zone's router: the gateway address (on lo), a veth port `h<n>` to each
    host, a link `xz<index>` to each zone of its cluster and `xc<index>` to each
    zone of another cluster, and the delay process."""

    def __init__(self, ns: str, name: str, cluster: str, index: int, cidr: str):
        super().__init__(ns)
        self.name, self.cluster, self.index = name, cluster, index
        self.cidr = cidr  # 10.C.Z.0/24
        self.gateway = cidr.rsplit(".", 1)[0] + ".1"
        self.hosts: list[Host] = []

    @property
    def key(self) -> str:
        return f"{self.cluster}/{self.name}"

    def link_to(self, other: Zone) -> str:
        return f"{'xz' if other.cluster == self.cluster else 'xc'}{other.index}"

    def delayed_packets(self) -> dict[str, int]:
        """Packets this router has queued for delay so far, by class (from the
        kernel's /proc/net/netfilter/nfnetlink_queue: queue, portid, waiting,
        copy mode, range, dropped, user dropped, last id, 1)."""
        table = self.run(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
        ids = {int(f[0]): int(f[7]) for f in (line.split() for line in table.splitlines()) if f}
        return {klass: ids[q] for klass, q in _QUEUE.items() if q in ids}

    def __repr__(self) -> str:
        return f"Zone({self.key} {self.cidr})"


class Host(Namespace):
    """A host: its own namespace, eth0 joined to its zone's router."""

    def __init__(self, ns: str, name: str, zone: Zone, addr: str, port: str):
        super().__init__(ns)
        self.name, self.zone, self.addr = name, zone, addr
        self.cluster = zone.cluster
        self.port = port  # the veth's end in the router

    def bytes(self) -> Bytes:
        """What this host sent and received, counted at the router's end of its veth."""
        at_router = self.zone.counters(self.port)
        return Bytes(sent=at_router.received, received=at_router.sent)

    def __repr__(self) -> str:
        return f"Host({self.name} {self.addr} in {self.zone.key})"


class Network:
    """Hosts in zones and clusters, with latency between them; see the module's guide."""

    def __init__(self, latency: Optional[dict[str, str]] = None):
        latency = dict(latency or {})
        unknown = sorted(set(latency) - set(LATENCY_CLASSES))
        if unknown:
            raise ConfigError(f"latency: unknown class {unknown[0]!r} (known: {', '.join(LATENCY_CLASSES)})")
        self.delay_us = {k: _delay_us(k, latency[k]) if k in latency else 0 for k in LATENCY_CLASSES}
        self.prefix = f"{_run_prefix()}{next(_counter)}-"
        self.hosts: dict[str, Host] = {}
        self.zones: dict[str, Zone] = {}  # by "cluster/zone"
        self.clusters: list[str] = []
        self._closed = False
        _open.add(self)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str, zone: str = "zone-a", cluster: str = "cluster-1") -> Host:
        """A new host in `zone` of `cluster` (both made on first use)."""
        if self._closed:
            raise NetnsError("this network is closed")
        _check_name("host", name)
        if name in self.hosts:
            raise ConfigError(f"host {name!r}: there is one by that name already")
        z = self.zones.get(f"{cluster}/{zone}") or self._add_zone(zone, cluster)
        if len(z.hosts) >= 253:
            raise ConfigError(f"zone {z.key}: full (253 hosts)")
        addr = f"{z.cidr.rsplit('.', 1)[0]}.{len(z.hosts) + 2}"
        port = f"h{len(z.hosts)}"
        h = Host(f"{self.prefix}h-{name}", name, z, addr, port)
        self._add_namespace(h.ns)
        self.hosts[name] = h  # from here on, close() deletes it
        z.hosts.append(h)
        # Keeps IPv6 (and its chatter) off eth0, but not off lo: ::1 stays.
        _cmd(["ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"], "ipv6")
        _cmd(
            ["ip", "-n", z.ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns],
            "veth",
        )
        _cmd(["ip", "-n", z.ns, "link", "set", port, "up"], "veth")
        _cmd(["ip", "-n", z.ns, "route", "add", f"{addr}/32", "dev", port], "route to host")
        # The zone's /24 shows on eth0, but routes nothing: even same-zone traffic goes via the router.
        _cmd(["ip", "-n", h.ns, "addr", "add", f"{addr}/24", "dev", "eth0", "noprefixroute"], "address")
        _cmd(["ip", "-n", h.ns, "link", "set", "eth0", "up"], "veth")
        _cmd(["ip", "-n", h.ns, "route", "add", z.gateway, "dev", "eth0", "scope", "link"], "route")
        _cmd(["ip", "-n", h.ns, "route", "add", "default", "via", z.gateway], "default route")
        return h

    def _add_namespace(self, ns: str) -> None:
        _cmd(["ip", "netns", "add", ns], "namespace")
        _cmd(["ip", "-n", ns, "link", "set", "lo", "up"], "loopback")

    def _add_zone(self, name: str, cluster: str) -> Zone:
        _check_name("zone", name)
        _check_name("cluster", cluster)
        if cluster not in self.clusters:
            if len(self.clusters) == MAX_CLUSTERS:
                raise ConfigError(f"cluster {cluster!r}: at most {MAX_CLUSTERS} clusters")
            self.clusters.append(cluster)
        in_cluster = sum(z.cluster == cluster for z in self.zones.values())
        if in_cluster == 254:
            raise ConfigError(f"zone {cluster}/{name}: at most 254 zones in a cluster")
        cidr = f"10.{200 + self.clusters.index(cluster)}.{in_cluster + 1}.0/24"
        z = Zone(f"{self.prefix}r-{cluster}-{name}", name, cluster, len(self.zones), cidr)
        self._add_namespace(z.ns)
        self.zones[z.key] = z  # from here on, close() deletes it
        sysctls = [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
        _cmd(["ip", "netns", "exec", z.ns, "sysctl", "-qw", *sysctls], "router sysctls")
        # On lo, the gateway answers ARP on every port and link (arp_ignore is 0).
        _cmd(["ip", "-n", z.ns, "addr", "add", f"{z.gateway}/32", "dev", "lo"], "gateway")
        self._start_delays(z)
        for other in self.zones.values():
            if other is not z:
                self._link(z, other)
        return z

    def _start_delays(self, z: Zone) -> None:
        """The delay process, bound to its queues before any rule sends packets
        there (a rule to an unbound queue drops them)."""
        queues = [f"{_QUEUE[k]}={us}" for k, us in self.delay_us.items() if us > 0]
        if not queues:
            return
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
        }
        argv = [sys.executable, "-m", "meshcore.netns.delay", *queues]
        proc = z.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        ready = select.select([proc.stdout], [], [], 30)[0] and proc.stdout.readline()
        if ready != "ready\n":
            proc.kill()
            _, err = proc.communicate()
            raise NetnsError(f"{z.ns}: the delay process did not start: {err.strip() or 'no answer in 30 s'}")
        for klass, us in self.delay_us.items():
            if us > 0:
                rule = [
                    "-A",
                    "FORWARD",
                    "-i",
                    "h+",
                    "-o",
                    _OUT[klass],
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    str(_QUEUE[klass]),
                ]
                _cmd(["ip", "netns", "exec", z.ns, "iptables", "-w", *rule], f"{klass} delay")

    def _link(self, a: Zone, b: Zone) -> None:
        """A veth between two routers and routes each way, to the peer router's
        gateway address, which answers ARP on the link too."""
        _cmd(
            [
                "ip",
                "-n",
                a.ns,
                "link",
                "add",
                a.link_to(b),
                "type",
                "veth",
                "peer",
                "name",
                b.link_to(a),
                "netns",
                b.ns,
            ],
            "link",
        )
        for here, there in ((a, b), (b, a)):
            _cmd(["ip", "-n", here.ns, "link", "set", here.link_to(there), "up"], "link")
            route = ["route", "add", there.cidr, "via", there.gateway, "dev", here.link_to(there), "onlink"]
            _cmd(["ip", "-n", here.ns, *route], "route")

    def zone(self, name: str) -> Zone:
        """A zone by "cluster/zone", or by its name alone if no other cluster has one so named."""
        if name in self.zones:
            return self.zones[name]
        found = [z for z in self.zones.values() if z.name == name]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ConfigError(f"zone {name!r}: no such zone (there are {', '.join(self.zones) or 'none'})")
        raise ConfigError(f"zone {name!r}: in more than one cluster; name it as cluster/zone")

    def bytes_between(self, a: str, b: str) -> Bytes:
        """What crossed the link between zones `a` and `b`: sent from a to b, and received by a from b."""
        za, zb = self.zone(a), self.zone(b)
        if za is zb:
            raise ConfigError(f"zone {a!r}: bytes within one zone cross no boundary; use host.bytes()")
        return za.counters(za.link_to(zb))

    def boundary_bytes(self) -> dict[str, int]:
        """Bytes (both ways) over all links between zones of one cluster, and between clusters."""
        totals = {"cross-zone": 0, "cross-cluster": 0}
        zones = list(self.zones.values())
        for i, a in enumerate(zones):
            for b in zones[i + 1 :]:
                klass = "cross-zone" if a.cluster == b.cluster else "cross-cluster"
                totals[klass] += a.counters(a.link_to(b)).total
        return totals

    def close(self, grace: float = 5.0) -> None:
        """Stops the processes, then deletes every namespace. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        spaces: list[Namespace] = [*self.hosts.values(), *self.zones.values()]
        for space in spaces:
            space._stop(grace)
        for space in spaces:
            _delete_namespace(space.ns)
        # A failure half-way through host() may leave a namespace not yet recorded.
        for ns in _namespaces():
            if ns.startswith(self.prefix):
                _delete_namespace(ns)


def sweep() -> list[str]:
    """Deletes the namespaces that runs which are gone left behind (a test run
    killed before it could clean up); returns their names. Live runs are left alone."""
    swept = []
    for ns in _namespaces():
        m = _RUN_NAME.match(ns)
        if m and _start_time(int(m.group(1))) != int(m.group(2)):
            _delete_namespace(ns)
            swept.append(ns)
    return swept


_probe: Optional[str] = None


def unavailable() -> Optional[str]:
    """Why this machine cannot build a Network (not root, a tool missing,
    namespaces not allowed), or None if it can."""
    global _probe
    if os.geteuid() != 0:
        return f"network namespaces need root (this is uid {os.geteuid()})"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if _probe is None:
        ns = f"{_run_prefix()}probe"
        done = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        _probe = "" if done.returncode == 0 else f"`ip netns add` is not allowed here: {done.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return _probe or None


@atexit.register
def _close_all() -> None:
    for net in list(_open):
        net.close(grace=1.0)
