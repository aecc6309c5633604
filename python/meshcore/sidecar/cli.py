"""`meshcore sidecar-init`: install (or `--remove`) the interception rules."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import MeshcoreError
from . import init
from .init import Interception


def port_list(text: str) -> tuple[init.PortRange, ...]:
    try:
        return init.parse_ports(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def port(text: str) -> int:
    ranges = port_list(text)
    if len(ranges) != 1 or ranges[0][0] != ranges[0][1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not one port")
    return ranges[0][0]


def add_sidecar_init_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser(
        "sidecar-init",
        help="redirect this network namespace's TCP traffic through the sidecar (iptables nat rules)",
        description="Installs iptables rules (iptables-nft where present, so nftables in the kernel) in "
        "the current network namespace: TCP arriving for the host goes to the inbound port, TCP from "
        "local processes other than the proxy's uid goes to the outbound port. Running it again replaces "
        "its rules; --remove deletes them and nothing else. Port lists are comma-separated, ranges a-b.",
    )
    s.add_argument(
        "--proxy-uid", type=int, required=True, help="the proxy's uid: its traffic is not redirected"
    )
    s.add_argument("--outbound-port", type=port, required=True, help="the transparent outbound listener")
    s.add_argument("--inbound-port", type=port, required=True, help="the transparent inbound listener")
    s.add_argument(
        "--skip-ports", type=port_list, default=(), help="inbound ports that go to the app directly"
    )
    s.add_argument(
        "--skip-outbound-ports", type=port_list, default=(), help="destination ports that bypass the proxy"
    )
    s.add_argument(
        "--opaque-ports",
        type=port_list,
        default=(),
        help="ports the proxy carries as opaque TCP without protocol detection; no rule changes, "
        "they are shown in the rules' comments and must not be skipped ports",
    )
    s.add_argument("--remove", action="store_true", help="delete meshcore's chains and jumps, nothing else")
    s.add_argument(
        "--dry-run", action="store_true", help="print the iptables commands instead of running them"
    )
    s.set_defaults(func=cmd_sidecar_init)


def cmd_sidecar_init(args: argparse.Namespace) -> int:
    spec = Interception(
        proxy_uid=args.proxy_uid,
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        skip_ports=args.skip_ports,
        skip_outbound_ports=args.skip_outbound_ports,
        opaque_ports=args.opaque_ports,
    )
    problems = spec.problems()
    if problems:
        raise MeshcoreError("sidecar-init: " + "; ".join(problems))
    families = init.find_tables(dry_run=args.dry_run)
    for tables in families:
        try:
            current = init.read_nat(tables)
        except MeshcoreError as e:
            if not args.dry_run:
                raise
            print(
                f"# {tables.family}: cannot read the current rules ({e}); "
                "shown for a table holding none of meshcore's rules",
                file=sys.stderr,
            )
            current = ""
        commands = init.plan(tables, current, None if args.remove else spec)
        if args.dry_run:
            print("\n".join(shlex.join(argv) for argv in commands))
        else:
            init.apply(commands)
    print(summary(spec, families, args.remove, args.dry_run), file=sys.stderr if args.dry_run else sys.stdout)
    return 0


def summary(spec: Interception, families: list[init.Tables], removed: bool, dry_run: bool) -> str:
    tools = ", ".join(f"{t.command} ({t.family}{', nftables' if t.nft else ''})" for t in families)
    verb = "would " if dry_run else ""
    if removed:
        return f"sidecar-init: {verb}remove meshcore's chains and jumps from the nat table with {tools}"
    skip_in = init.format_ports(spec.skip_ports) or "none"
    skip_out = init.format_ports(spec.skip_outbound_ports) or "none"
    lines = [
        f"sidecar-init: {verb}install the interception with {tools}",
        f"  inbound:  TCP for this host -> port {spec.inbound_port}, except ports {skip_in}",
        f"  outbound: TCP from local processes -> port {spec.outbound_port}, except uid {spec.proxy_uid}, "
        f"loopback (incl. this host's own addresses), destination ports {skip_out}",
    ]
    if spec.opaque_ports:
        lines.append(
            f"  opaque:   ports {init.format_ports(spec.opaque_ports)} are intercepted like the rest; "
            "the proxy must skip protocol detection on them (no iptables rule differs)"
        )
    return "\n".join(lines)
