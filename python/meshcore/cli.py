"""The `meshcore` command."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional

from . import __version__
from .errors import MeshcoreError
from .identity.cli import duration
from .signals import handle_signals, serve_until_stopped


def cmd_run(args: argparse.Namespace) -> int:
    from .lifecycle.manager import Lifecycle
    from .lifecycle.run import start_upgradable, version_config
    from .proxy import Proxy

    running: list[Lifecycle] = []  # set once serving: a SIGHUP before that has nothing to reload

    def on_hangup() -> None:
        if running:
            running[0].reload(source="signal", who="signal")
        else:
            print("meshcore: SIGHUP before ready: nothing to reload yet", file=sys.stderr, flush=True)

    stop = handle_signals(on_hangup)  # before anything starts: a signal from here on is handled
    source = args.config if args.config_version is None else version_config(args.config, args.config_version)
    proxy = Proxy(source)  # validated in full before a running process is asked for anything
    lifecycle = Lifecycle.for_proxy(proxy, Path(args.config))  # its state_dir, before any port is bound
    upgrades = start_upgradable(
        proxy, args.config, upgrade=args.upgrade, grace=args.grace, on_handover=stop.set
    )
    try:
        lifecycle.start()
    except BaseException:
        if upgrades is not None:
            upgrades.close()
        proxy.stop(args.grace)
        raise
    proxy.lifecycle = lifecycle
    proxy.begin_fleet_reports()  # held on inherited sockets until this process is the proxy
    running.append(lifecycle)
    proxy.trim_memory()  # the lifecycle read, validated and hashed the config once more
    print("meshcore: ready", flush=True)
    try:
        serve_until_stopped(proxy, stop=stop)
    finally:
        if upgrades is not None:
            upgrades.close()
    print(f"meshcore: draining (grace {args.grace}s)", flush=True)
    lifecycle.close()
    proxy.stop(args.grace)
    print("meshcore: stopped", flush=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .proxy import check

    config = check(args.config)
    print(
        f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.routes)} routes, "
        f"{len(config.services)} services)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.mesh:
        from .demo_mesh import run_mesh_demo

        return run_mesh_demo(duration=args.duration)
    from .demo import run_demo

    return run_demo(
        listen=args.listen,
        admin=args.admin,
        duration=args.duration,
        control=args.control,
        inbound_admin=args.inbound_admin,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    def usage_error(message: str) -> int:
        print(f"meshcore bench: error: {message}", file=sys.stderr)
        return 2

    # Everything that can be checked is checked before the run, not after minutes of load.
    duration = args.duration.total_seconds()
    if duration <= 0:
        return usage_error("--duration must be positive")
    if args.rate is not None and not 0 < args.rate < float("inf"):
        return usage_error("--rate must be a positive number of requests per second")
    if args.connections < 1 or args.streams < 1:
        return usage_error("--connections and --streams must be at least 1")
    try:
        bench.check_url(args.url)
    except ValueError as e:
        return usage_error(str(e))
    bench.check_resolves(args.url)
    if args.plot:
        bench.check_plot(args.plot)
    show = not args.json and sys.stderr.isatty()

    def progress(elapsed: float, done: int, errors: int) -> None:
        if show:
            filled = int(30 * min(elapsed / duration, 1.0))
            bar = "#" * filled + "-" * (30 - filled)
            print(
                f"\r[{bar}] {elapsed:5.1f}s {done} done, {errors} errors", end="", file=sys.stderr, flush=True
            )

    try:
        result = bench.run(
            args.url,
            rate=args.rate,
            duration=duration,
            connections=args.connections,
            http2=args.http2,
            streams=args.streams,
            progress=progress,
        )
    except ValueError as e:  # what only the Rust URL parser catches
        return usage_error(str(e))
    if show:
        print(file=sys.stderr)
    print(result.to_json() if args.json else bench.format_table(result))
    if result.requests == 0:
        # No response at all is no benchmark: scripts must not take it for one.
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))
        what = f"every request failed ({errors}); nothing answered at" if errors else "no request sent to"
        print(f"meshcore bench: {what} {args.url}", file=sys.stderr)
        return 1
    if args.plot:
        bench.plot(result, args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshcore", description="A service-mesh data plane.")
    p.add_argument("--version", action="version", version=f"meshcore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="serve with a config file until SIGINT/SIGTERM, then drain; SIGHUP reloads the config"
    )
    run.add_argument("config")
    run.add_argument("--grace", type=float, default=10.0, help="seconds to drain in-flight requests")
    run.add_argument(
        "--upgrade",
        action="store_true",
        help="take over the listening sockets of the meshcore running with this config's state dir, "
        "then tell it to drain and exit",
    )
    run.add_argument(
        "--config-version",
        type=int,
        metavar="N",
        help="start with version N of the config history instead of the file (what `meshcore upgrade` "
        "passes: the version the running process serves)",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file; exit 1 with the errors if invalid")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser(
        "demo",
        help="a small mesh on loopback (control plane, two proxies with mTLS, backends in two zones and a "
        "second cluster, traffic) and where to look",
    )
    demo.add_argument("--listen", default="127.0.0.1:4140", help="the outbound proxy")
    demo.add_argument("--admin", default="127.0.0.1:9990", help="the outbound proxy's admin API")
    demo.add_argument("--inbound-admin", default="127.0.0.1:9991", help="the inbound proxy's admin API")
    demo.add_argument("--control", default="127.0.0.1:8470", help="the control plane")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--mesh",
        action="store_true",
        help="needs root: hosts in network namespaces (two zones and a second cluster), each with "
        "sidecar-init's rules and a transparent sidecar, an app per zone, a client running load "
        "(--listen, --admin, --inbound-admin and --control do not apply)",
    )
    demo.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="load-test a URL (open-loop constant rate, or max)")
    b.add_argument("url")
    b.add_argument(
        "--rate", type=float, default=None, help="requests per second (default: as fast as possible)"
    )
    # A bad value gets argparse's usage message, not a traceback.
    b.add_argument("--duration", type=duration, default=timedelta(seconds=10))
    b.add_argument("--connections", type=int, default=10)
    b.add_argument(
        "--http2", action="store_true", help="HTTP/2 (prior knowledge for http://, ALPN for https://)"
    )
    b.add_argument("--streams", type=int, default=10, help="concurrent streams per HTTP/2 connection")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument(
        "--plot", metavar="PNG", help="write a latency-by-percentile plot (pip install 'meshcore[plot]')"
    )
    b.set_defaults(func=cmd_bench)

    from .control.cli import add_control_commands
    from .control.mesh_cli import add_mesh_commands
    from .gateway import add_gateway_command
    from .identity.cli import add_identity_commands
    from .lifecycle.cli import add_lifecycle_commands
    from .policy_cli import add_policy_commands
    from .sidecar.cli import add_sidecar_init_command
    from .views.tap import add_tap_command
    from .views.top import add_top_command

    add_identity_commands(sub)
    add_lifecycle_commands(sub)
    add_control_commands(sub)
    add_gateway_command(sub)
    add_mesh_commands(sub)
    add_policy_commands(sub)
    add_sidecar_init_command(sub)
    add_tap_command(sub)
    add_top_command(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MeshcoreError as e:
        print(f"meshcore: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
