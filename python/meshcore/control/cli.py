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
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ConfigError
from .link_cli import add_link_arguments, link_sources
from .sources import Source

if TYPE_CHECKING:
    from ..identity.service import IdentityService
    from .issued_tls import IssuedServerTls
    from .server import CredentialsSource

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
    serve.add_argument(
        "--etcd",
        metavar="URLS",
        help="share state with other replicas through etcd: http://HOST:PORT[,...] (needs meshcore[etcd])",
    )
    serve.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME=QUERY",
        help="a service from DNS: NAME=HOST:PORT (A/AAAA) or NAME=srv:QNAME (SRV), then optional "
        ",zone=ZONE,cluster=CLUSTER; repeatable; needs meshcore[dns]",
    )
    serve.add_argument(
        "--dns-server", metavar="HOST:PORT", help="the nameserver --dns asks (default: the system's)"
    )
    add_link_arguments(serve)
    _add_identity_flags(serve)
    serve.set_defaults(func=cmd_serve)


def _add_identity_flags(serve: argparse.ArgumentParser) -> None:
    """`meshcore identity serve`'s flags, mounted: the control plane also runs the identity service
    and serves with a certificate from that CA (no --tls-* then)."""
    from ..identity.cli import duration

    group = serve.add_argument_group("identity service (mounted in the control plane)")
    group.add_argument(
        "--identity-ca", metavar="DIR", help="a CA made by `meshcore identity init`: serve its certify API"
    )
    group.add_argument(
        "--identity-bind", default="127.0.0.1:8443", help="its HTTPS address (default 127.0.0.1:8443)"
    )
    from ..identity.cli import add_token_flags

    add_token_flags(group)
    group.add_argument(
        "--identity-ttl", type=duration, default="24h", help="lifetime of issued certificates (default 24h)"
    )
    group.add_argument(
        "--identity-name",
        default="control",
        help="the control plane's own identity name (default control: spiffe://<trust domain>/control)",
    )
    group.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address proxies reach the control plane by, named in its certificate "
        "(repeatable; default: the --bind host, and localhost for a loopback or wildcard bind)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .server import ServerTls

    given = [f"--{n}" for n in ("tls-cert", "tls-key", "trust-anchors") if getattr(args, n.replace("-", "_"))]
    if given and len(given) != 3:
        raise ConfigError(
            f"{', '.join(given)} given alone: TLS needs --tls-cert, --tls-key and --trust-anchors together"
        )
    tls: Optional[CredentialsSource] = None
    if given:
        tls = ServerTls(Path(args.tls_cert), Path(args.tls_key), Path(args.trust_anchors))
    identity = None
    if args.identity_ca:
        if given:
            raise ConfigError(
                f"{', '.join(given)} with --identity-ca: the control plane then serves with a certificate "
                "from that CA; leave them out"
            )
        tls, identity = _mount_identity(args)
    else:
        for flag in ("tokens", "token_review", "token_audience", "host"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')} needs --identity-ca DIR")
    try:
        sources = build_sources(args)
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="meshcore-control: %(message)s")
        asyncio.run(serve(args.bind, sources, tls, etcd=args.etcd, identity=identity))
    finally:
        if identity is not None:
            identity.close()
    print("meshcore-control: stopped", flush=True)
    return 0


def _mount_identity(args: argparse.Namespace) -> tuple[IssuedServerTls, IdentityService]:
    """The control plane's own certificate from --identity-ca, and the identity service on
    --identity-bind (started here; the caller closes it)."""
    from ..identity.bootstrap_tokens import token_checker
    from ..identity.service import IdentityService
    from .issued_tls import IssuedServerTls, default_hosts
    from .server import split_host_port

    try:
        host, _ = split_host_port(args.bind)
        checker = token_checker(args.tokens, args.token_review, args.token_audience)
        tls = IssuedServerTls(
            args.identity_ca,
            name=args.identity_name,
            hosts=args.host or default_hosts(host),
            ttl=args.identity_ttl,
        )
    except (ValueError, OSError) as e:
        raise ConfigError(f"control serve: {e}") from None
    service = IdentityService(args.identity_ca, args.identity_bind, tokens=checker, ttl=args.identity_ttl)
    return tls, service


def build_sources(args: argparse.Namespace) -> list[Source]:
    """The sources the command line names, in the order that gives a service to the first."""
    from .sources.directory import DirectorySource

    sources: list[Source] = []
    if args.dir:
        sources.append(DirectorySource(Path(args.dir)))
    if args.dns:
        from .sources.dns import DnsSource, parse_dns_flag, parse_dns_server

        server = parse_dns_server(args.dns_server) if args.dns_server else None
        sources.append(DnsSource([parse_dns_flag(v) for v in args.dns], server))
    elif args.dns_server:
        raise ConfigError("--dns-server given without --dns: name the services to resolve")
    if args.kubernetes:
        from .sources.kubernetes import KubernetesSource

        sources.append(
            KubernetesSource(args.kubernetes, namespace=args.kubernetes_namespace, cluster=args.cluster)
        )
    elif args.kubernetes_namespace:
        raise ConfigError("--kubernetes-namespace needs --kubernetes KUBECONFIG")
    sources += link_sources(args)  # after the local ones: a local service wins over an imported one
    # A replica sharing state through etcd may run no source: it serves what the others write.
    if not sources and not getattr(args, "etcd", None):
        raise ConfigError(
            "control serve: give at least one source of services (--dir DOCS, --dns, --kubernetes, --link)"
        )
    return sources


async def serve(
    bind: str,
    sources: Sequence[Source],
    tls: Optional[CredentialsSource] = None,
    *,
    etcd: Optional[str] = None,
    identity: Optional[IdentityService] = None,
) -> None:
    """`etcd`: share state with other replicas through it; `identity`: the IdentityService running
    beside, named in the serving line."""
    import asyncio

    from .server import ControlServer
    from .store import Store

    store: Any = Store() if etcd is None else await _etcd_store(etcd)  # EtcdStore shares its interface
    started: list[Source] = []
    try:
        server = ControlServer(store, bind, tls)  # checks the bind before any source starts
        for source in sources:
            source.start(store.feed(source.name, source.adds_endpoints))
            started.append(source)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        count = sum(1 for s in store.all() if s.exists)
        names = ", ".join(s.describe() for s in sources) or "no source of its own"
        if etcd is not None:
            names += f", shared through etcd at {etcd}"
        mode = "plaintext, loopback" if tls is None else "mTLS"
        spiffe = getattr(tls, "spiffe_id", None)  # IssuedServerTls names itself
        if spiffe:
            mode += f" as {spiffe}"
        if identity is not None:
            mode += f"; identity service on {identity.url}"
        print(f"meshcore-control: serving on {server.address} ({mode})", flush=True)
        print(f"meshcore-control: ready ({count} services from {names}, epoch {store.epoch})", flush=True)
        await stop.wait()
        await server.stop(grace=1.0)
    finally:
        for source in reversed(started):
            source.stop()
        if etcd is not None:
            await asyncio.get_running_loop().run_in_executor(None, store.close)


async def _etcd_store(urls: str) -> Any:
    """An `EtcdStore` connected and loaded (in a thread: it waits for etcd)."""
    import asyncio

    from .etcd_store import EtcdStore, parse_endpoints_urls

    store = EtcdStore(parse_endpoints_urls(urls))
    await asyncio.get_running_loop().run_in_executor(None, store.start)
    return store
