"""`meshcore reload`, `meshcore rollback`, `meshcore config history|diff` and `meshcore upgrade`:
clients of a running proxy's admin API (stdlib urllib, nothing to install). A refusal exits 1
with the server's reason; a usage problem (a bad token file) exits 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from ..tokens import TokenFileError, read_token_file
from .diff import render_diff
from .spawn import ANSWER_SLACK
from .upgrade import READY_TIMEOUT

__all__ = ["add_lifecycle_commands"]

TIMEOUT_SECONDS = 60.0  # a reload loads plugins and may wait for the lock behind another change


class Refused(Exception):
    """The admin API answered with an error, or could not be reached; the message says why."""


class AdminClient:
    def __init__(self, admin: str, token_file: Optional[str], timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self.base = (admin if "://" in admin else f"http://{admin}").rstrip("/")
        self.token: Optional[str] = None
        if token_file is not None:
            self.token = read_token_file(Path(token_file))[0][1]  # the first token

    def request(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token is not None:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            reason = e.read().decode("utf-8", "replace").strip()
            try:  # a JSON answer says why in "error"
                reason = json.loads(reason)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise Refused(f"{method} {path}: {e.code} {e.reason}\n{reason}") from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise Refused(f"cannot reach the admin API at {self.base}: {why}") from None


def _outcome(answer: dict[str, Any], verb: str) -> str:
    if answer["result"] == "unchanged":
        return f"config unchanged: version {answer['version']} is running"
    return f"config version {answer['version']} applied ({verb})"


def cmd_reload(args: argparse.Namespace, client: AdminClient) -> str:
    return _outcome(client.request("POST", "/config/reload"), "reloaded from the file")


def cmd_rollback(args: argparse.Namespace, client: AdminClient) -> str:
    body = None if args.version is None else {"version": args.version}
    answer = client.request("POST", "/config/rollback", body)
    return _outcome(answer, "rollback" if args.version is None else f"rollback to version {args.version}")


def cmd_history(args: argparse.Namespace, client: AdminClient) -> str:
    versions = client.request("GET", "/config/history")["versions"]
    rows = [("VERSION", "APPLIED", "SOURCE", "WHO", "HASH", "")]
    for v in versions:
        notes = []
        if v["current"]:
            notes.append("running")
        if v.get("rollback_of") is not None:
            notes.append(f"rollback of {v['rollback_of']}")
        if v.get("bad"):
            notes.append(f"bad: {v['bad']}")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["applied_at"]))
        rows.append((str(v["version"]), when, v["source"], v["who"], v["hash"][7:19], ", ".join(notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def cmd_diff(args: argparse.Namespace, client: AdminClient) -> str:
    a, b = (client.request("GET", f"/config/history/{n}") for n in (args.a, args.b))
    for v in (a, b):
        if v["config"] is None:
            raise Refused(f"version {v['version']} is stored in a form this meshcore cannot read")
    return render_diff(a, b).rstrip("\n")


def cmd_upgrade(args: argparse.Namespace, client: AdminClient) -> str:
    answer = client.request("POST", "/upgrade", {"command": [args.meshcore]} if args.meshcore else {})
    return f"process {answer.get('pid')} serves; the previous one is draining"


def _run(args: argparse.Namespace) -> int:
    # An upgrade is answered once the new process serves, which may take its ready deadline.
    timeout = READY_TIMEOUT + 2 * ANSWER_SLACK if args.command == "upgrade" else TIMEOUT_SECONDS
    try:
        client = AdminClient(args.admin, args.token_file, timeout)
    except TokenFileError as e:
        print(f"meshcore {args.command}: --token-file: {e}", file=sys.stderr)
        return 2
    try:
        print(args.lifecycle_func(args, client))
    except Refused as e:
        print(f"meshcore {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def _admin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", required=True, metavar="ADDR", help="the proxy's admin API, host:port or a URL")
    p.add_argument(
        "--token-file", metavar="F", help="send the first token of this admin token file ('NAME TOKEN' lines)"
    )
    p.set_defaults(func=_run)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("a version is a positive integer")
    return n


def add_lifecycle_commands(sub: Any) -> None:
    reload = sub.add_parser("reload", help="make a running proxy re-read and apply its config file")
    _admin_options(reload)
    reload.set_defaults(lifecycle_func=cmd_reload)

    rollback = sub.add_parser(
        "rollback", help="restore an earlier config version (default: the newest earlier good one)"
    )
    rollback.add_argument("version", nargs="?", type=_positive)
    _admin_options(rollback)
    rollback.set_defaults(lifecycle_func=cmd_rollback)

    config = sub.add_parser(
        "config", help="a running proxy's config history; the config's JSON Schema; starter configs"
    )
    verbs = config.add_subparsers(dest="config_command", required=True)
    history = verbs.add_parser("history", help="every kept version, newest first")
    _admin_options(history)
    history.set_defaults(lifecycle_func=cmd_history)
    diff = verbs.add_parser("diff", help="what changed from version A to version B")
    diff.add_argument("a", type=_positive)
    diff.add_argument("b", type=_positive)
    _admin_options(diff)
    diff.set_defaults(lifecycle_func=cmd_diff)
    from ..config_cli import add_config_file_commands

    add_config_file_commands(verbs)

    upgrade = sub.add_parser(
        "upgrade", help="replace a running meshcore with a new process (another version too), losing nothing"
    )
    upgrade.add_argument(
        "--meshcore",
        metavar="PATH",
        help="the meshcore command the new process runs (default: the running one's interpreter's)",
    )
    _admin_options(upgrade)
    upgrade.set_defaults(lifecycle_func=cmd_upgrade)
