"""`meshcore policy explain`: which rule decides a request, and why, asked of the proxy's own
authorization code (the Rust evaluator the data plane runs), so the two cannot disagree."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

ALLOWED, DENIED, USAGE = 0, 1, 2

_FAILED = {
    "method": "the method is not one it names",
    "identity": "the caller's identity does not match",
    "network": "the caller's address is in none of its networks",
}


def add_policy_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policy = sub.add_parser("policy", help="inbound authorization: explain how a request is decided")
    commands = policy.add_subparsers(dest="policy_command", required=True)
    explain = commands.add_parser(
        "explain",
        help="which rule decides a request on an inbound listener, and why (exit 0 allowed, 1 denied, "
        "2 a bad config or argument)",
    )
    explain.add_argument("--config", required=True, help="the proxy's config file")
    explain.add_argument("--identity", help="the caller's SPIFFE ID; omitted: a caller without one")
    explain.add_argument("--path", help="the request path; omitted: an opaque TCP connection")
    explain.add_argument("--method", default="GET", help="the request method (default GET)")
    explain.add_argument("--host", default="", help="the request's Host, which routing may match")
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header routing may match (repeatable)",
    )
    explain.add_argument("--listener", help="the inbound listener (default: the config's only one)")
    explain.add_argument("--from", dest="peer", default="127.0.0.1", help="the caller's address")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from . import ConfigError, _core
    from .config import load

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"meshcore: ConfigError: {e}", file=sys.stderr)
        return USAGE
    core = config.to_core()
    inbound = [lst["name"] for lst in core["listeners"] if lst["direction"] == "inbound"]
    listener = args.listener
    if listener is None:
        if len(inbound) != 1:
            count = f"the config has {len(inbound)} inbound listeners"
            print(f"meshcore: --listener: {count}: name one", file=sys.stderr)
            return USAGE
        listener = inbound[0]
    elif listener not in inbound:
        known = ", ".join(inbound) or "none"
        print(f"meshcore: --listener: no inbound listener {listener!r} (inbound: {known})", file=sys.stderr)
        return USAGE
    headers = []
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon:
            print(f"meshcore: --header {header!r}: give NAME:VALUE", file=sys.stderr)
            return USAGE
        headers.append((name.strip(), value.strip()))
    try:
        answer = json.loads(
            _core.explain_policy(
                json.dumps(core["policy"]),
                listener,
                args.peer,
                args.identity,
                args.path,
                args.method,
                routes_json=json.dumps(core["routes"]),
                host=args.host,
                headers=headers,
            )
        )
    except ValueError as e:
        print(f"meshcore: {e}", file=sys.stderr)
        return USAGE
    answer["listener"] = listener
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(describe(answer, args))
    return DENIED if answer["decision"] in ("deny", "refused") else ALLOWED


def describe(answer: dict[str, Any], args: argparse.Namespace) -> str:
    """The explanation in a few lines of prose."""
    who = args.identity or "a caller without an identity"
    what = "an opaque connection"
    if args.path:
        seen = answer.get("path") or args.path
        what = f"{args.method} {seen}" + (f" (normalised from {args.path})" if seen != args.path else "")
    lines = [f"{what} from {who} ({args.peer}) on listener {answer['listener']}:"]
    if answer["decision"] == "refused":
        lines.append(f"  refused before policy: {answer['status']} {answer['reason']}")
        return "\n".join(lines)
    if args.path:
        lines.append(f"  route: {answer['route']}" if answer["route"] else "  route: none matches")
    for scope in answer["protected_by"]:
        what = scope if scope.startswith("route ") else f"path_prefix {scope}"
        lines.append(f"  protected by {what}: only its rules decide there")
    for step in answer["tried"]:
        failed = step["failed"]
        lines.append(f"  rule {step['rule']}: " + (_FAILED[failed] if failed else "allows"))
    if answer["default_decided"]:
        lines.append(f"  no rule allows: the default decides ({answer['default']})")
    elif answer["protected_by"]:
        lines.append(f"  the default ({answer['default']}) does not apply to a protected path")
    verdict = {
        "allow": "allowed",
        "deny": "denied: 403, meshcore-error: unauthorized",
        "audit": "allowed by audit (it would be denied, and is logged)",
    }[answer["decision"]]
    lines.append(f"decision: {verdict} (rule label {answer['rule']})")
    return "\n".join(lines)
