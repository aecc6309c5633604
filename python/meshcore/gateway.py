"""`meshcore gateway`: the door into a cluster for the other clusters of a mesh (#18).

A gateway is a meshcore `Proxy` with one mTLS listener. It follows its own cluster's control plane
and routes each request by its authority: `NAME`, `NAME:PORT` or `NAME.anything` goes to the local
service NAME (the longest service name that the host starts with, label by label). A host that
names no service gets 404. Routes follow the control plane: each update becomes a config dict
handed to `Proxy.reload`, so a service that appears is routed and one that goes is not.

Exact names are routes in the core (no Python on the request path); the `NAME.anything` forms go
through one catch-all route whose plugin picks the service.

Only this cluster's endpoints are forwarded to: those with no cluster, or the gateway's own
(`--cluster`). Endpoints another cluster's link imported here are not: the gateway is one hop in,
never a way on to a third cluster or back (which would loop).

The caller's identity: the listener requires mTLS, and the core sets `meshcore-client-id` to the
caller's verified SPIFFE ID (dropping any the caller sent), so the request goes on carrying it. A
workload reached directly (an endpoint without `identity`) sees its real caller; an inbound proxy
behind the gateway takes it as the caller when its listener names the gateway in
`trusted_gateways` (else it sets the header from its own mTLS peer, the gateway).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ConfigError, MeshcoreError

__all__ = ["Gateway", "ServiceByHost", "add_gateway_command", "gateway_config"]

LISTENER = "gateway"
BY_DOMAIN = "by-domain"  # the catch-all route, for NAME.anything
# A name routed by the exact host: the characters a host has (no '*', which would be a wildcard).
ROUTABLE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")

Endpoints = dict[str, list[dict[str, Any]]]


def gateway_config(
    bind: str,
    identity: dict[str, Any],
    services: Endpoints,
    *,
    admin: Optional[str] = None,
    zone: Optional[str] = None,
    cluster: Optional[str] = None,
) -> dict[str, Any]:
    """The gateway's proxy config for `services` (name -> endpoints as the control plane has them)."""
    local = {name: _local(endpoints, cluster) for name, endpoints in sorted(services.items())}
    routable = [name for name in local if ROUTABLE.fullmatch(name)]
    routes: list[dict[str, Any]] = [
        {"listener": LISTENER, "name": f"service:{name}", "host": name, "backends": [{"service": name}]}
        for name in routable
    ]
    if routable:
        # The plugin chooses the service; the backend is only there because a route needs one.
        routes.append({"listener": LISTENER, "name": BY_DOMAIN, "backends": [{"service": routable[0]}]})
    else:
        routes.append(
            {
                "listener": LISTENER,
                "name": BY_DOMAIN,
                "direct_response": {"status": 404, "body": "no service in this cluster\n"},
            }
        )
    return {
        "admin": admin,
        "zone": zone,
        "cluster": cluster,
        "identity": identity,
        "policy": {"default": "all-authenticated"},
        "listeners": [{"name": LISTENER, "bind": bind, "tls": "mesh", "direction": "inbound"}],
        "routes": routes,
        "services": [{"name": name, "balancer": "zonal", "endpoints": local[name]} for name in routable],
    }


def _local(endpoints: list[dict[str, Any]], cluster: Optional[str]) -> list[dict[str, Any]]:
    keys = ("addr", "zone", "cluster", "identity")
    return [
        {k: e.get(k) for k in keys}
        for e in endpoints
        if not e.get("cluster") or (cluster is not None and e.get("cluster") == cluster)
    ]


class ServiceByHost:
    """The plugin of the catch-all route: `NAME.anything` -> the service NAME, else 404."""

    def __init__(self) -> None:
        self.services: frozenset[str] = frozenset()  # swapped whole, read without a lock

    def service_for(self, authority: str) -> Optional[str]:
        host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
        host = host.lower()
        services = self.services
        labels = host.split(".")
        for end in range(len(labels), 0, -1):
            name = ".".join(labels[:end])
            if name in services:
                return name
        return None

    def on_request(self, req: Any) -> Any:
        from .plugins import Response

        name = self.service_for(req.authority or "")
        if name is None:
            return Response(404, {"content-type": "text/plain"}, f"no service for {req.authority!r}\n")
        req.service = name
        return None


class Gateway:
    """A running gateway: `start()` follows the control plane and serves; `stop()` ends both."""

    def __init__(
        self,
        bind: str,
        control: str,
        cert: Path,
        key: Path,
        trust_anchors: Path,
        *,
        trust_domains: tuple[str, ...] = (),
        admin: Optional[str] = None,
        zone: Optional[str] = None,
        cluster: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
    ):
        from . import __version__
        from .control.client import Subscription

        for flag, path in (("--cert", cert), ("--key", key), ("--trust-anchors", trust_anchors)):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        self._identity: dict[str, Any] = {
            "trust_anchors": str(trust_anchors),
            "cert": str(cert),
            "key": str(key),
        }
        if trust_domains:
            own = _trust_domain_of(Path(cert))
            self._identity["trust_domains"] = list(dict.fromkeys([own, *trust_domains]))
        self._bind, self._admin, self._zone, self._cluster = bind, admin, zone, cluster
        self._log = log or _log
        self._router = ServiceByHost()
        self._lock = threading.Lock()  # one config change at a time
        self._proxy: Any = None
        self._applied: Optional[dict[str, Any]] = None
        tls = (cert, key, trust_anchors) if control.startswith("https:") else None
        info = {"id": f"gateway/{bind}", "version": __version__, "zone": zone, "cluster": cluster}
        try:
            self._subscription = Subscription(control, ["*"], self._on_update, tls=tls, proxy_info=info)
        except ConfigError as e:
            raise ConfigError(f"--control: {e}") from None
        _check(self._config({}))  # every flag checked before anything is bound

    @property
    def proxy(self) -> Any:
        return self._proxy

    @property
    def address(self) -> tuple[str, int]:
        return self._proxy.addresses[LISTENER]  # type: ignore[no-any-return]

    def start(self, first_snapshot_wait: float = 5.0) -> Gateway:
        from .proxy import Proxy

        self._subscription.start()
        if not self._subscription.wait_synced(first_snapshot_wait):
            wait = f"{first_snapshot_wait:g}s"
            self._log(f"control plane not reached within {wait}; routing none until it answers")
        with self._lock:
            config = self._config(self._services())
            self._router.services = frozenset(s["name"] for s in config["services"])
            try:
                proxy = Proxy(config)
                proxy.add_plugin(self._router, routes=[BY_DOMAIN], name="service-by-host")
                self._proxy = proxy.start()
            except BaseException:
                self._subscription.stop()  # a port in use: nothing is left running
                raise
            self._applied = config
        return self

    def stop(self, grace: float = 5.0) -> None:
        self._subscription.stop()
        with self._lock:
            if self._proxy is not None:
                self._proxy.stop(grace)

    def services(self) -> list[str]:
        """The services routed now."""
        return sorted(self._router.services)

    def _services(self) -> Endpoints:
        return {
            name: [dict(e) for e in r["endpoints"]]
            for name, r in self._subscription.state().items()
            if r["type"] == "service" and r["exists"]
        }

    def _config(self, services: Endpoints) -> dict[str, Any]:
        return gateway_config(
            self._bind, self._identity, services, admin=self._admin, zone=self._zone, cluster=self._cluster
        )

    def _on_update(self, _changed: list[Any]) -> None:
        with self._lock:
            if self._proxy is None:
                return  # start() builds from the state the subscription holds
            config = self._config(self._services())
            if config == self._applied:
                return
            try:
                self._proxy.reload(config)
            except MeshcoreError as e:
                self._log(f"update refused, the routes in force stay: {type(e).__name__}: {e}")
                return
            before = {s["name"] for s in self._applied["services"]} if self._applied else set()
            now = {s["name"] for s in config["services"]}
            self._router.services = frozenset(now)
            self._applied = config
            for name in sorted(now - before):
                self._log(f"routing {name}")
            for name in sorted(before - now):
                self._log(f"no longer routing {name}")


# The config fields the flags become, for errors that name the flag.
FLAGS = {
    "identity.cert": "--cert",
    "identity.key": "--key",
    "identity.trust_anchors": "--trust-anchors",
    "identity.trust_domains": "--trust-domain",
    "listeners[0].bind": "--bind",
    "admin": "--admin",
    "zone": "--zone",
    "cluster": "--cluster",
}


def _check(config: dict[str, Any]) -> None:
    """Checks the gateway's config as `Proxy` would, reporting each problem by its flag."""
    from .proxy import check

    try:
        check(config)
    except ConfigError as e:
        problems = getattr(e, "problems", None) or [("", str(e))]
        lines = []
        for path, reason in problems:
            flag = next((f for field, f in FLAGS.items() if path.startswith(field)), path or "flags")
            lines.append(f"{flag}: {reason}")
        raise ConfigError("meshcore gateway: " + "; ".join(lines)) from None


def _log(line: str) -> None:
    print(f"meshcore-gateway: {line}", file=sys.stderr, flush=True)


def _trust_domain_of(cert: Path) -> str:
    """The trust domain of the SPIFFE ID in the certificate (its URI SAN)."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as e:
        raise ConfigError(f"--cert {cert}: no SPIFFE ID to take the trust domain from ({e})") from None
    for uri in uris.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").split("/", 1)[0]
    raise ConfigError(f"--cert {cert}: no spiffe:// URI SAN")


def add_gateway_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser(
        "gateway",
        help="accept mTLS from other clusters on one port and forward into this cluster's services",
    )
    g.add_argument("--bind", required=True, help="HOST:PORT of the one mTLS port")
    g.add_argument("--control", required=True, metavar="URL", help="this cluster's control plane")
    g.add_argument("--cert", required=True, metavar="FILE", help="the gateway's certificate chain (PEM)")
    g.add_argument("--key", required=True, metavar="FILE", help="its private key (PEM)")
    g.add_argument(
        "--trust-anchors", required=True, metavar="FILE", help="callers' certificates chain to these"
    )
    g.add_argument(
        "--trust-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="accept callers from this trust domain too (repeatable; the gateway's own is always accepted)",
    )
    g.add_argument("--admin", metavar="ADDR", help="the admin API (HOST:PORT)")
    g.add_argument("--zone", help="the gateway's zone (zonal balancing)")
    g.add_argument(
        "--cluster", help="this cluster's name: endpoints labelled with it are local, as are unlabelled ones"
    )
    g.add_argument("--grace", type=float, default=10.0, help="seconds to drain in-flight requests")
    g.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    from .signals import handle_signals, serve_until_stopped

    gateway = Gateway(  # checks every flag, binds nothing
        args.bind,
        args.control,
        Path(args.cert),
        Path(args.key),
        Path(args.trust_anchors),
        trust_domains=tuple(args.trust_domain),
        admin=args.admin,
        zone=args.zone,
        cluster=args.cluster,
    )
    stop = handle_signals()
    gateway.start()
    host, port = gateway.address
    print(f"meshcore-gateway: serving on {host}:{port} (mTLS)", flush=True)
    print(f"meshcore-gateway: ready ({len(gateway.services())} services from {args.control})", flush=True)
    try:
        serve_until_stopped(gateway.proxy, stop=stop)
    finally:
        gateway.stop(args.grace)
    print("meshcore-gateway: stopped", flush=True)
    return 0
