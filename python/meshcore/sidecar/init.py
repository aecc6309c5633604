"""The interception rules of a transparent sidecar, in the `nat` table of the current
network namespace (what Linkerd's proxy-init does, written for meshcore).

    PREROUTING -p tcp -> MESHCORE_INBOUND
        skip-ports                          RETURN   (reach the app directly)
        everything else                  -> MESHCORE_INBOUND_REDIRECT: REDIRECT to the inbound port
    OUTPUT -p tcp -> MESHCORE_OUTBOUND
        -m owner --uid-owner PROXY_UID      RETURN   (the proxy's own connections, or it would loop)
        -o lo                               RETURN   (localhost, and the app calling its own pod IP)
        skip-outbound-ports                 RETURN
        everything else                  -> MESHCORE_OUTPUT_REDIRECT: REDIRECT to the outbound port

Traffic leaving through `lo` is never redirected. That covers 127.0.0.0/8 and ::1 (the
inbound proxy handing a connection to the app) and an app calling its own pod IP, which
the kernel routes through `lo` too: like Linkerd, a workload talking to itself stays
inside one trust boundary and goes straight to itself rather than out through its own
outbound proxy and back in through its own inbound one.

Opaque ports change no rule: they are intercepted like any other port, and the proxy
skips protocol detection on them. They are written into the redirect rules' comments so
`iptables-save` shows them, and a port that is both opaque and skipped is refused (its
traffic never reaches the proxy, so calling it opaque would be a mistake).

`iptables` here is `iptables-nft` where present: the same commands, with the rules kept
by nftables in the kernel (`nft list table ip nat` shows them). ip6tables gets the same
rules when the namespace has IPv6.

Running it again replaces its rules (it removes what it finds of its own first), and
`--remove` deletes exactly its chains and the jumps to them, nothing else.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import MeshcoreError

PREFIX = "MESHCORE_"
INBOUND = "MESHCORE_INBOUND"
INBOUND_REDIRECT = "MESHCORE_INBOUND_REDIRECT"
OUTBOUND = "MESHCORE_OUTBOUND"
OUTPUT_REDIRECT = "MESHCORE_OUTPUT_REDIRECT"
CHAINS = (INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTPUT_REDIRECT)

# `-m multiport` takes at most 15 ports per rule, a range counting as two.
MULTIPORT_SLOTS = 15

PortRange = tuple[int, int]


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """`"22,8000-8100"` -> ((22, 22), (8000, 8100)); ValueError names the bad item."""
    ranges = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        low, sep, high = item.partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ValueError(f"{item!r} is not a port or a range a-b") from None
        if not (1 <= first <= last <= 65535):
            raise ValueError(f"{item!r}: ports are 1-65535 and a range runs low to high")
        ranges.append((first, last))
    return tuple(ranges)


def format_ports(ranges: Iterable[PortRange], range_sep: str = "-") -> str:
    return ",".join(str(a) if a == b else f"{a}{range_sep}{b}" for a, b in ranges)


@dataclass(frozen=True)
class Interception:
    """What `sidecar-init` was asked for."""

    proxy_uid: int
    outbound_port: int
    inbound_port: int
    skip_ports: tuple[PortRange, ...] = ()
    skip_outbound_ports: tuple[PortRange, ...] = ()
    opaque_ports: tuple[PortRange, ...] = ()

    def problems(self) -> list[str]:
        """Contradictions in the request, each a sentence naming the flags."""
        found = []
        for flag, skipped in (
            ("--skip-ports", self.skip_ports),
            ("--skip-outbound-ports", self.skip_outbound_ports),
        ):
            both = _overlaps(self.opaque_ports, skipped)
            if both:
                found.append(
                    f"ports {format_ports(both)} are in both --opaque-ports and {flag}: skipped traffic "
                    "never reaches the proxy, so it cannot treat it as opaque; drop them from one list"
                )
        for flag, port in (("--outbound-port", self.outbound_port), ("--inbound-port", self.inbound_port)):
            if not 1 <= port <= 65535:
                found.append(f"{flag} {port}: ports are 1-65535")
        if self.outbound_port == self.inbound_port:
            found.append(
                f"--outbound-port and --inbound-port are both {self.inbound_port}: the proxy needs one "
                "listener for each direction"
            )
        if self.proxy_uid < 0:
            found.append(f"--proxy-uid {self.proxy_uid}: a uid is 0 or more")
        return found


def _overlaps(a: Sequence[PortRange], b: Sequence[PortRange]) -> list[PortRange]:
    return [(max(x0, y0), min(x1, y1)) for x0, x1 in a for y0, y1 in b if max(x0, y0) <= min(x1, y1)]


def _multiport_groups(ranges: Sequence[PortRange]) -> list[str]:
    """The ranges as `--dports` values of at most MULTIPORT_SLOTS slots each."""
    groups: list[list[PortRange]] = [[]]
    used = 0
    for r in ranges:
        cost = 1 if r[0] == r[1] else 2
        if used + cost > MULTIPORT_SLOTS:
            groups.append([])
            used = 0
        groups[-1].append(r)
        used += cost
    return [format_ports(g, ":") for g in groups if g]


def _rule(chain: str, *matches: str, jump: list[str], why: str = "") -> list[str]:
    """`-A CHAIN matches [comment] -j ...`, in the order iptables-save prints it."""
    comment = ["-m", "comment", "--comment", f"meshcore: {why}"] if why else []
    return ["-t", "nat", "-A", chain, *matches, *comment, "-j", *jump]


def install_rules(spec: Interception) -> list[list[str]]:
    """The iptables arguments (after the program name) that install the interception,
    the same for iptables and ip6tables. A pure function of the request."""
    opaque = f", opaque ports {format_ports(spec.opaque_ports)}" if spec.opaque_ports else ""
    rules = [["-t", "nat", "-N", chain] for chain in CHAINS]

    for dports in _multiport_groups(spec.skip_ports):
        rules.append(
            _rule(
                INBOUND, "-p", "tcp", "-m", "multiport", "--dports", dports, jump=["RETURN"], why="skip-ports"
            )
        )
    rules.append(_rule(INBOUND, "-p", "tcp", jump=[INBOUND_REDIRECT], why="inbound"))
    rules.append(
        _rule(
            INBOUND_REDIRECT,
            "-p",
            "tcp",
            jump=["REDIRECT", "--to-ports", str(spec.inbound_port)],
            why=f"to the inbound proxy{opaque}",
        )
    )

    rules.append(
        _rule(OUTBOUND, "-m", "owner", "--uid-owner", str(spec.proxy_uid), jump=["RETURN"], why="proxy uid")
    )
    rules.append(_rule(OUTBOUND, "-o", "lo", jump=["RETURN"], why="loopback and own addresses"))
    for dports in _multiport_groups(spec.skip_outbound_ports):
        rules.append(
            _rule(
                OUTBOUND,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                dports,
                jump=["RETURN"],
                why="skip-outbound-ports",
            )
        )
    rules.append(_rule(OUTBOUND, "-p", "tcp", jump=[OUTPUT_REDIRECT], why="outbound"))
    rules.append(
        _rule(
            OUTPUT_REDIRECT,
            "-p",
            "tcp",
            jump=["REDIRECT", "--to-ports", str(spec.outbound_port)],
            why=f"to the outbound proxy{opaque}",
        )
    )

    # The jumps last, once the chains they lead to are complete.
    rules.append(_rule("PREROUTING", "-p", "tcp", jump=[INBOUND]))
    rules.append(_rule("OUTPUT", "-p", "tcp", jump=[OUTBOUND]))
    return rules


def removal_rules(nat_save: str) -> list[list[str]]:
    """The iptables arguments that delete meshcore's chains and every jump to them from
    the `nat` table described by `nat_save` (`iptables-save -t nat` output), touching
    nothing else. Empty when there is nothing of meshcore's. A pure function."""
    ours: list[str] = []
    jumps: list[list[str]] = []
    in_nat = False
    for line in nat_save.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif in_nat and line.startswith(":" + PREFIX):
            ours.append(line[1:].split()[0])
        elif in_nat and line.startswith("-A "):
            args = shlex.split(line)
            chain, target = args[1], _target(args)
            if not chain.startswith(PREFIX) and target.startswith(PREFIX):
                jumps.append(["-t", "nat", "-D", *args[1:]])
    flush = [["-t", "nat", "-F", chain] for chain in ours]
    delete = [["-t", "nat", "-X", chain] for chain in ours]
    return jumps + flush + delete


def _target(args: list[str]) -> str:
    for flag in ("-j", "-g"):
        if flag in args:
            return args[args.index(flag) + 1]
    return ""


@dataclass(frozen=True)
class Tables:
    """One family's programs: iptables or ip6tables, the nft flavour where present."""

    family: str  # "IPv4" / "IPv6"
    command: str
    save: str

    @property
    def nft(self) -> bool:
        return self.command.endswith("-nft")


MISSING = (
    "sidecar-init needs iptables (with iptables-save), which is not installed: "
    "apt-get install iptables (Debian/Ubuntu), apk add iptables (Alpine)"
)


def find_tables(dry_run: bool = False) -> list[Tables]:
    """The families to configure: IPv4 always, IPv6 when the namespace has it and
    ip6tables is installed. MeshcoreError when there is no iptables at all, except for a
    dry run, which then shows the plain `iptables` commands."""
    found = []
    for family, name in (("IPv4", "iptables"), ("IPv6", "ip6tables")):
        for command in (f"{name}-nft", name):
            # iptables-nft pairs with iptables-nft-save, iptables with iptables-save.
            if shutil.which(command) and shutil.which(f"{command}-save"):
                found.append(Tables(family, command, f"{command}-save"))
                break
    if not found or found[0].family != "IPv4":
        if not dry_run:
            raise MeshcoreError(MISSING)
        found = [Tables("IPv4", "iptables", "iptables-save"), Tables("IPv6", "ip6tables", "ip6tables-save")]
    has_ipv6 = os.path.exists("/proc/net/if_inet6")
    return [t for t in found if t.family == "IPv4" or has_ipv6]


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise MeshcoreError(f"{shlex.join(argv)}: {e}") from None
    if done.returncode != 0:
        err = done.stderr.strip()
        if "Permission denied" in err or "Operation not permitted" in err:
            raise MeshcoreError(
                f"{argv[0]} is not permitted here ({err.splitlines()[-1]}): changing a network namespace's "
                "rules needs CAP_NET_ADMIN; run sidecar-init as root, or in an init container with the "
                "NET_ADMIN capability"
            )
        raise MeshcoreError(f"{shlex.join(argv)} failed (exit {done.returncode}): {err}")
    return done.stdout


def read_nat(tables: Tables) -> str:
    """The family's `nat` table as `iptables-save -t nat` prints it."""
    return _run([tables.save, "-t", "nat"])


def plan(tables: Tables, current_nat: str, spec: Interception | None) -> list[list[str]]:
    """Full command lines for one family: remove what `current_nat` holds of meshcore's,
    then install `spec` (None for --remove)."""
    steps = removal_rules(current_nat)
    if spec is not None:
        steps += install_rules(spec)
    return [[tables.command, *args] for args in steps]


def apply(commands: list[list[str]]) -> None:
    for argv in commands:
        _run(argv)
