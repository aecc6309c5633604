"""`meshcore control serve`: the control plane, until SIGINT/SIGTERM.

asyncio and grpc are imported by the command, not here: every `meshcore` command builds this parser,
and `meshcore run` keeps them unloaded (tests/test_cli.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .sources import Source

__all__ = ["add_control_commands"]


def add_control_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers the control subcommands on the `meshcore` parser."""
    parser = sub.add_parser("control", help="the control plane: services and endpoints pushed to proxies")
    commands = parser.add_subparsers(dest="control_command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a directory of service documents to subscribed proxies until SIGINT/SIGTERM"
    )
    serve.add_argument("--bind", default="127.0.0.1:8470", help="HOST:PORT (default 127.0.0.1:8470)")
    serve.add_argument("--dir", metavar="DOCS", help="directory of TOML/YAML [[services]], watched")
    serve.add_argument(
        "--kubernetes",
        metavar="KUBECONFIG",
        help="Services and EndpointSlices from the API server this kubeconfig names ('in-cluster': the "
        "pod's service account); a Service NAME in NAMESPACE is served as NAME.NAMESPACE",
    )
    serve.add_argument("--kubernetes-namespace", metavar="NS", help="with --kubernetes: only this namespace")
    serve.add_argument("--cluster", metavar="NAME", help="the cluster the endpoints found here are in")
    serve.add_argument("--tls-cert", metavar="FILE", help="the control plane's certificate chain (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    serve.add_argument(
        "--trust-anchors", metavar="FILE", help="clients must present a certificate from these (mTLS)"
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .server import ServerTls

    given = [f"--{n}" for n in ("tls-cert", "tls-key", "trust-anchors") if getattr(args, n.replace("-", "_"))]
    if given and len(given) != 3:
        raise ConfigError(
            f"{', '.join(given)} given alone: TLS needs --tls-cert, --tls-key and --trust-anchors together"
        )
    tls = ServerTls(Path(args.tls_cert), Path(args.tls_key), Path(args.trust_anchors)) if given else None
    sources = build_sources(args)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="meshcore-control: %(message)s")
    asyncio.run(serve(args.bind, sources, tls))
    print("meshcore-control: stopped", flush=True)
    return 0


def build_sources(args: argparse.Namespace) -> list[Source]:
    """The sources the command line names, in the order that gives a service to the first."""
    from .sources.directory import DirectorySource

    sources: list[Source] = []
    if args.dir:
        sources.append(DirectorySource(Path(args.dir)))
    if args.kubernetes:
        from .sources.kubernetes import KubernetesSource

        sources.append(
            KubernetesSource(args.kubernetes, namespace=args.kubernetes_namespace, cluster=args.cluster)
        )
    elif args.kubernetes_namespace:
        raise ConfigError("--kubernetes-namespace needs --kubernetes KUBECONFIG")
    if not sources:
        raise ConfigError(
            "control serve: give at least one source of services (--dir DOCS, --kubernetes KUBECONFIG)"
        )
    return sources


async def serve(bind: str, sources: Sequence[Source], tls: Optional[object] = None) -> None:
    import asyncio

    from .server import ControlServer, ServerTls
    from .store import Store

    assert tls is None or isinstance(tls, ServerTls)
    store = Store()
    server = ControlServer(store, bind, tls)  # checks the bind before any source starts
    started: list[Source] = []
    try:
        for source in sources:
            source.start(store.feed(source.name))
            started.append(source)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        count = sum(1 for s in store.all() if s.exists)
        names = ", ".join(s.describe() for s in sources)
        print(
            f"meshcore-control: serving on {server.address} ({'mTLS' if tls else 'plaintext, loopback'})",
            flush=True,
        )
        print(f"meshcore-control: ready ({count} services from {names}, epoch {store.epoch})", flush=True)
        await stop.wait()
        await server.stop(grace=1.0)
    finally:
        for source in reversed(started):
            source.stop()
