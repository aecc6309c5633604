"""`meshcore mesh status` and `meshcore mesh rollout`: the fleet as the control plane sees it, and
a config or another meshcore rolled out to it in waves (meshcore.control.rollout). grpc is imported
by the commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from ..errors import ConfigError, MeshcoreError, TlsError

__all__ = ["add_mesh_commands"]

RPC_TIMEOUT = 15.0


def add_mesh_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("mesh", help="the fleet of proxies following a control plane: status, rollouts")
    commands = parser.add_subparsers(dest="mesh_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--control", required=True, metavar="URL", help="https://HOST:PORT (http:// on loopback)"
        )
        p.add_argument("--tls-cert", metavar="FILE", help="your certificate chain (PEM), for https")
        p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
        p.add_argument(
            "--trust-anchors", metavar="FILE", help="the control plane's certificate chains to these"
        )
        p.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser("status", help="every proxy: version, config version, golden metrics")
    common(status)
    status.set_defaults(func=cmd_status)

    rollout = commands.add_parser(
        "rollout",
        help="move the fleet to a config or another meshcore in waves, canary first; "
        "roll back on worse metrics",
    )
    common(rollout)
    what = rollout.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config", metavar="FILE", help="the new proxy config (becomes the next config version)"
    )
    what.add_argument("--version", type=int, metavar="V", help="a config version the control plane holds")
    what.add_argument(
        "--meshcore",
        metavar="PATH",
        help="the meshcore executable to run instead (another virtualenv's bin/meshcore, say): an "
        "absolute path on the proxies' hosts; each proxy is replaced by a process of it, as "
        "`meshcore upgrade --meshcore PATH` does, and rolled back to the one it ran before",
    )
    rollout.add_argument(
        "--waves",
        default="1,25%,50%,100%",
        help="cumulative wave sizes, counts or percentages (default 1,25%%,50%%,100%%)",
    )
    rollout.add_argument(
        "--bake", default="30s", help="how long each wave serves before it is judged (default 30s)"
    )
    rollout.add_argument(
        "--apply-timeout", default="60s", help="how long a proxy has to report the new version (default 60s)"
    )
    rollout.add_argument(
        "--max-error-rate-increase",
        default="1%",
        help="a wave's error rate may exceed the others' by this much, in points (default 1%%)",
    )
    rollout.add_argument(
        "--max-p99-ratio",
        type=float,
        default=1.5,
        help="a wave's p99 may be this many times the others' (default 1.5)",
    )
    rollout.add_argument(
        "--min-requests", type=int, default=20, help="a wave with fewer responses is not judged (default 20)"
    )
    rollout.set_defaults(func=cmd_rollout)


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    parts = urlsplit(args.control)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ConfigError(f"--control {args.control!r}: expected https://HOST:PORT (http:// on loopback)")
    host = parts.hostname
    target = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
    given = [n for n in ("tls_cert", "tls_key", "trust_anchors") if getattr(args, n)]
    if parts.scheme == "http":
        if given:
            raise ConfigError(
                f"--control {args.control}: TLS files given for a plain http:// URL; use https://"
            )
        return grpc.insecure_channel(target)
    if len(given) != 3:
        raise ConfigError(f"--control {args.control}: https needs --tls-cert, --tls-key and --trust-anchors")

    def read(flag: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise TlsError(f"--{flag} {path}: cannot read: {e.strerror or e}") from None

    credentials = grpc.ssl_channel_credentials(
        read("trust-anchors", args.trust_anchors),
        private_key=read("tls-key", args.tls_key),
        certificate_chain=read("tls-cert", args.tls_cert),
    )
    return grpc.secure_channel(target, credentials)


def _rpc_error(args: argparse.Namespace, e: Any) -> MeshcoreError:
    return MeshcoreError(f"control plane {args.control}: {e.code().name}: {e.details()}")


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from .protocol import STATUS_PATH, decode, encode

    with _channel(args) as channel:
        status = channel.unary_unary(STATUS_PATH, request_serializer=encode, response_deserializer=decode)
        try:
            answer = status({}, timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            raise _rpc_error(args, e) from None
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(format_table(answer["proxies"]))
    configs = ", ".join(f"v{c['version']} ({c['source']})" for c in answer["configs"]) or "none"
    print(f"\nconfig versions held: {configs}")
    rollout = answer.get("rollout")
    if rollout:
        print(f"last rollout: {rollout.get('target') or _rollout_name(rollout)}, {rollout['state']}")
    return 0


def _config_cell(config: dict[str, Any]) -> str:
    local = config.get("version")
    if local is None:
        return "-"
    fleet = config.get("fleet_version")
    return f"v{fleet} (local {local})" if fleet is not None else f"local {local}"


def format_table(proxies: list[dict[str, Any]]) -> str:
    header = [
        "PROXY",
        "IDENTITY",
        "VERSION",
        "CONFIG",
        "ZONE",
        "CLUSTER",
        "RPS",
        "SUCCESS",
        "P99",
        "LAST SEEN",
    ]
    rows = [header]
    for p in proxies:
        seen = "never" if p["last_seen_s"] is None else f"{p['last_seen_s']:.1f}s ago"
        if not p["subscribed"]:
            seen += " (no stream)"
        rows.append(
            [
                p["id"],
                p["identity"] or "-",
                p["version"],
                _config_cell(p["config"]),
                p["zone"] or "-",
                p["cluster"] or "-",
                f"{p['rps']:.1f}",
                "-" if p["success_rate"] is None else f"{p['success_rate'] * 100:.2f}%",
                "-" if p["p99_ms"] is None else f"{p['p99_ms']:.1f} ms",
                seen,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _rate(text: str) -> float:
    """'1%' or '0.01' -> 0.01."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"--max-error-rate-increase {text!r}: expected a share such as 1% or 0.01")
    return value


def rollout_request(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import format_of, parse_duration

    request: dict[str, Any] = {
        "waves": [w.strip() for w in args.waves.split(",") if w.strip()],
        "bake_s": parse_duration(args.bake) / 1000,
        "apply_timeout_s": parse_duration(args.apply_timeout) / 1000,
        "max_error_rate_increase": _rate(args.max_error_rate_increase),
        "max_p99_ratio": args.max_p99_ratio,
        "min_requests": args.min_requests,
    }
    if args.config is not None:
        path = Path(args.config)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise ConfigError(f"--config {path}: cannot read: {e}") from None
        fmt = format_of(path)
        request["config"] = {"text": text, "format": fmt, "source": str(path)}
    elif args.meshcore is not None:
        if not Path(args.meshcore).is_absolute():
            raise ConfigError(
                f"--meshcore {args.meshcore}: give an absolute path: each proxy runs it on its own host"
            )
        request["meshcore"] = [args.meshcore]
    else:
        request["version"] = args.version
    return request


def _rollout_name(event: dict[str, Any]) -> str:
    version = event.get("config_version")
    return f"v{version}" if version is not None else str(event.get("target"))


def cmd_rollout(args: argparse.Namespace) -> int:
    import grpc

    from .protocol import ROLLOUT_PATH, decode, encode

    request = rollout_request(args)
    final: Optional[dict[str, Any]] = None
    with _channel(args) as channel:
        rollout = channel.unary_stream(ROLLOUT_PATH, request_serializer=encode, response_deserializer=decode)
        try:
            for event in rollout(request):
                final = event
                if args.json:
                    print(json.dumps(event), flush=True)
                else:
                    print(f"rollout {_rollout_name(event)}: {event['message']}", flush=True)
        except grpc.RpcError as e:
            raise _rpc_error(args, e) from None
    if final is None or final["kind"] != "done":
        if final is None or final["kind"] != "failed":
            print("meshcore: the control plane ended the rollout stream early", file=sys.stderr)
        return 1
    return 0
