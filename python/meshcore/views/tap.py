"""`meshcore tap ADMIN`: prints a running proxy's requests as they are answered, from its admin
API's `/tap` stream (JSON lines), one line each, or the JSON itself with `--json`."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any, Optional

from .admin_client import add_admin_arguments, admin_base, admin_token

__all__ = ["add_tap_command", "describe"]

# The admin API sends an empty line every 15 s when no request comes: silence past this is a
# dead connection.
READ_TIMEOUT = 45.0


def describe(summary: dict[str, Any]) -> str:
    """One request as a line: what was asked, the answer, how long, and where it went."""
    target = f"{summary.get('authority') or '-'}{summary.get('path', '')}"
    answer = str(summary.get("status"))
    if summary.get("grpc_status") is not None:
        answer += f" grpc={summary['grpc_status']}"
    parts = [
        f"{summary.get('method', '-')} {target}",
        f"-> {answer}",
        f"{summary.get('duration_ms', 0):.1f}ms",
    ]
    for key, name in (
        ("route", "route"),
        ("service", "service"),
        ("endpoint", "endpoint"),
        ("zone", "zone"),
        ("identity", "src"),
        ("trace_id", "trace"),
    ):
        if summary.get(key):
            parts.append(f"{name}={summary[key]}")
    if summary.get("retried"):
        parts.append("retried")
    return " ".join(parts)


def _url(admin: str, args: argparse.Namespace) -> str:
    base = admin_base(admin)
    query = {"format": "json"}
    for name in ("route", "service", "authority", "limit"):
        value = getattr(args, name)
        if value is not None:
            query[name] = str(value)
    return f"{base}/tap?{urllib.parse.urlencode(query)}"


def follow(url: str, token: Optional[str], out: IO[str], err: IO[str], as_json: bool) -> int:
    req = urllib.request.Request(url, headers={"accept": "application/x-ndjson"})
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=READ_TIMEOUT) as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                summary = json.loads(line)
                if "dropped" in summary and "method" not in summary:
                    dropped = summary["dropped"]
                    print(f"meshcore tap: {dropped} requests dropped so far (reading too slowly)", file=err)
                    continue
                print(line if as_json else describe(summary), file=out, flush=True)
    except urllib.error.HTTPError as e:
        try:
            reason = e.read().decode("utf-8", "replace").strip()
        except OSError:  # the answer broke off
            reason = ""
        print(f"meshcore tap: {e.code} {e.reason}: {reason}", file=err)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"meshcore tap: cannot reach the admin API at {url}: {getattr(e, 'reason', e)}", file=err)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        token = admin_token(args)
    except ValueError as e:
        print(f"meshcore tap: {e}", file=sys.stderr)
        return 2
    try:
        return follow(_url(args.admin, args), token, sys.stdout, sys.stderr, args.json)
    except KeyboardInterrupt:
        return 0


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, not {value!r}")
    return int(value)


def add_tap_command(sub: Any) -> None:
    p = sub.add_parser("tap", help="print a running proxy's requests live, from its admin API")
    add_admin_arguments(p)
    p.add_argument("--route", help="only this route's requests")
    p.add_argument("--service", help="only requests to this service")
    p.add_argument("--authority", help="only requests for this authority (host, with or without port)")
    p.add_argument("--limit", type=_positive, help="stop after this many requests")
    p.add_argument("--json", action="store_true", help="print each request's summary as JSON")
    p.set_defaults(func=_run)
