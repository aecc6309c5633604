"""`meshcore identity ...`: create a CA, issue workload certificates, serve the certify API."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from datetime import timedelta
from typing import Callable

Command = Callable[[argparse.Namespace], int]


def add_identity_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers the identity subcommands on the `meshcore` parser."""
    parser = sub.add_parser(
        "identity", help="workload identity: a CA, SPIFFE certificates, the issuing service"
    )
    commands = parser.add_subparsers(dest="identity_command", required=True)

    init = commands.add_parser("init", help="create a trust anchor and an issuer in DIR")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--trust-domain", default="mesh.local")
    init.add_argument("--ttl", type=duration, default="8760h", help="validity of both CAs (default 8760h)")
    init.set_defaults(func=_clean_errors(cmd_init))

    issue = commands.add_parser("issue", help="issue a key and certificate for an identity name")
    issue.add_argument("dir", metavar="DIR")
    issue.add_argument("--name", required=True, help="identity name, e.g. ns/default/sa/web")
    issue.add_argument("--ttl", type=duration, default="24h", help="certificate lifetime (default 24h)")
    issue.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.crt and PREFIX.key")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address clients reach this server by (repeatable; for the control plane)",
    )
    issue.set_defaults(func=_clean_errors(cmd_issue))

    serve = commands.add_parser("serve", help="serve the certify API over HTTPS until SIGINT/SIGTERM")
    serve.add_argument("dir", metavar="DIR")
    serve.add_argument("--bind", default="127.0.0.1:8443")
    add_token_flags(serve)
    serve.add_argument(
        "--ttl", type=duration, default="24h", help="lifetime of issued certificates (default 24h)"
    )
    serve.set_defaults(func=_clean_errors(cmd_serve))

    rotate = commands.add_parser(
        "rotate-anchor",
        help="replace the trust anchor without downtime, one checked step at a time",
        description="Steps, in order: add (a new anchor in every bundle), issuer (a new issuer under "
        "it), roll (wait for workload certificates to renew), remove (the old anchor, once nothing "
        "chains to it). Each is checked against the proxies' admin APIs (GET /identity); status "
        "shows where things stand.",
    )
    rotate.add_argument("dir", metavar="DIR", help="the CA directory (`meshcore identity init`)")
    rotate.add_argument("step", choices=["status", "add", "issuer", "roll", "remove"])
    rotate.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="FILE",
        help="a trust anchors file proxies read, kept in step with DIR's (repeatable)",
    )
    rotate.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="ADMIN_URL",
        help="a proxy's admin API, e.g. http://127.0.0.1:9990 (repeatable): every one is checked",
    )
    rotate.add_argument(
        "--ttl", type=duration, default="8760h", help="validity of the new anchor or issuer (default 8760h)"
    )
    rotate.add_argument(
        "--wait", type=duration, default="5m", help="how long a step waits for the proxies (default 5m)"
    )
    rotate.set_defaults(func=_clean_errors(cmd_rotate_anchor))


def add_token_flags(parser: argparse._ActionsContainer) -> None:
    """How workloads prove who they are to an identity service (`identity serve`, and the one
    `control serve --identity-ca` mounts): --tokens, --token-review, --token-audience."""
    parser.add_argument(
        "--tokens", metavar="FILE", help="bootstrap tokens: JSON object or lines of 'token name'"
    )
    parser.add_argument(
        "--token-review",
        metavar="KUBECONFIG",
        help="accept Kubernetes ServiceAccount tokens, checked by TokenReview (`in-cluster`: the pod's "
        "account); the workload NS/SA may have the name ns/NS/sa/SA; needs meshcore[kubernetes]",
    )
    parser.add_argument(
        "--token-audience",
        action="append",
        default=[],
        metavar="AUDIENCE",
        help="a ServiceAccount token must be meant for this audience (repeatable; default: the API "
        "server's own)",
    )


def duration(value: str) -> timedelta:
    """'24h', '10s', '300ms', or bare seconds ('10') as in the config -> timedelta
    (named for argparse's 'invalid duration value' message)."""
    from ..config import parse_duration  # pydantic is loaded only when a duration is given

    try:
        seconds = float(value)
    except ValueError:
        return timedelta(milliseconds=parse_duration(value))
    return timedelta(milliseconds=parse_duration(seconds))


def cmd_init(args: argparse.Namespace) -> int:
    from .ca import init_ca  # cryptography is loaded only by identity commands

    init_ca(args.dir, trust_domain=args.trust_domain, ttl=args.ttl)
    print(f"meshcore: trust anchor and issuer for {args.trust_domain} written to {args.dir}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from .ca import cert_info, issue  # cryptography is loaded only by identity commands

    chain, _ = issue(args.dir, args.name, ttl=args.ttl, out_prefix=args.out, hosts=args.host)
    info = cert_info(chain)
    print(
        f"meshcore: {info['spiffe_id']} valid until {info['not_after']:%Y-%m-%d %H:%M:%S} UTC "
        f"written to {args.out}.crt and {args.out}.key"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .bootstrap_tokens import token_checker
    from .service import IdentityService  # cryptography and uvicorn, only for this command

    checker = token_checker(args.tokens, args.token_review, args.token_audience)
    stop = _stop_on_signals()  # before printing the URL, so a signal right after it is handled
    with IdentityService(args.dir, args.bind, tokens=checker, ttl=args.ttl) as service:
        print(f"identity service on {service.url}", flush=True)
        # A timed wait keeps signal handling prompt on every platform.
        while not stop.wait(0.5):
            pass
    return 0


def cmd_rotate_anchor(args: argparse.Namespace) -> int:
    from .rotation import Rotation

    rotation = Rotation(
        args.dir, args.bundle, args.proxy, wait=args.wait.total_seconds(), say=lambda m: print(m, flush=True)
    )
    step = args.step
    if step in ("add", "issuer"):
        getattr(rotation, step)(args.ttl)
    else:
        getattr(rotation, step)()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    return stop


def _clean_errors(command: Command) -> Command:
    """Bad input (a name, a ttl, a missing file) ends in a one-line message rather than a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, OSError) as e:
            print(f"meshcore: error: {e}", file=sys.stderr)
            return 1

    return run
