"""`meshcore demo`: a small mesh on loopback, with no root needed.

- a control plane (`meshcore control serve`, its own process) serving a documents directory the
  user may edit while the demo runs;
- backends in two zones of cluster `east` and one in cluster `west`, each behind an inbound
  listener of one inbound proxy (mTLS only, callers must be meshed);
- an outbound proxy in `zone-a` of `east` that learns the endpoints from the control plane,
  balances across cost tiers (same zone, other zones, other clusters) and calls the inbound
  proxy over mTLS with its own SPIFFE identity;
- a little traffic (a few requests a second) so that metrics move.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from .backend import Backend
from .errors import BindError

TRUST_DOMAIN = "demo.mesh"
WEB_NAME = "ns/demo/sa/web"
CLIENT_NAME = "ns/demo/sa/client"
WEB_ID = f"spiffe://{TRUST_DOMAIN}/{WEB_NAME}"
# name, zone, cluster, service
BACKENDS = [
    ("web-a1", "zone-a", "east", "web"),
    ("web-b1", "zone-b", "east", "web"),
    ("web-west1", "west-a", "west", "web"),
    ("web-v2-a1", "zone-a", "east", "web-v2"),
]
TRAFFIC_PER_SECOND = 5


def identity_files(directory: Path) -> dict[str, dict[str, str]]:
    """A CA and one certificate each for the inbound proxy (web) and the outbound one (client)."""
    from .identity.ca import init_ca, issue

    ca = directory / "ca"
    init_ca(ca, trust_domain=TRUST_DOMAIN)
    files = {}
    for who, name in (("web", WEB_NAME), ("client", CLIENT_NAME)):
        issue(ca, name, ttl=timedelta(hours=24), out_prefix=directory / who)
        files[who] = {
            "trust_anchors": str(ca / "trust-anchor.pem"),
            "cert": str(directory / f"{who}.crt"),
            "key": str(directory / f"{who}.key"),
        }
    return files


def inbound_config(backends: dict[str, Backend], identity: dict[str, str], admin: str) -> dict[str, Any]:
    """One mTLS listener per backend, each routed to its own app, as each pod's sidecar would be."""
    return {
        "admin": admin,
        "identity": identity,
        "listeners": [
            {"name": f"in-{name}", "bind": "127.0.0.1:0", "direction": "inbound", "tls": "mesh"}
            for name in backends
        ],
        "routes": [{"listener": f"in-{name}", "backends": [{"service": f"app-{name}"}]} for name in backends],
        "services": [
            {"name": f"app-{name}", "protocol": "http1", "endpoints": [{"addr": b.addr}]}
            for name, b in backends.items()
        ],
        "policy": {"default": "all-authenticated"},  # only meshed callers get in
    }


def services_document(inbound: dict[str, tuple[str, int]]) -> str:
    """The control plane's documents: each endpoint is an inbound listener, with the zone and
    cluster of the backend behind it and the inbound proxy's identity (so callers use mTLS)."""
    out = ["# Edit me while the demo runs: the outbound proxy follows within a second.\n"]
    for service in ("web", "web-v2"):
        out.append(f'\n[[services]]\nname = "{service}"\nendpoints = [\n')
        for name, zone, cluster, svc in BACKENDS:
            if svc == service:
                host, port = inbound[f"in-{name}"]
                out.append(
                    f'  {{ addr = "{host}:{port}", zone = "{zone}", cluster = "{cluster}", '
                    f'identity = "{WEB_ID}" }},  # {name}\n'
                )
        out.append("]\n")
    return "".join(out)


def outbound_config(listen: str, admin: str, control: str, identity: dict[str, str]) -> dict[str, Any]:
    return {
        "admin": admin,
        "zone": "zone-a",
        "cluster": "east",
        "identity": identity,
        "discovery": {"control": control},
        "listeners": [{"name": "outbound", "bind": listen, "protocol": "auto"}],
        "routes": [
            {"listener": "outbound", "headers": {"x-canary": "1"}, "backends": [{"service": "web-v2"}]},
            {
                "listener": "outbound",
                "path_prefix": "/",
                "timeout": "10s",
                "backends": [{"service": "web", "weight": 90}, {"service": "web-v2", "weight": 10}],
            },
        ],
        # No endpoints: they come from the control plane. Zonal: the cheapest tier first.
        "services": [{"name": name, "balancer": "zonal"} for name in ("web", "web-v2")],
    }


class ControlPlaneProcess:
    """`meshcore control serve` as a child process, stopped with the demo."""

    def __init__(self, docs: Path, bind: str, log: Path):
        self.log = log
        with open(log, "w") as errors:  # its log would drown the guide; the guide names the file
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshcore", "control", "serve", "--dir", str(docs), "--bind", bind],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.match(r"meshcore-control: serving on (\S+)", line)
        if not match:
            self.stop()
            reason = log.read_text().strip().splitlines()[-1:] or ["no reason given"]
            raise BindError(f"--control {bind}: the control plane did not start: {reason[0]}")
        self.addr = match.group(1)
        self.proc.stdout.readline()  # ready

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def send_traffic(url: str, stop: threading.Event) -> None:
    """A few requests a second until `stop`; failures are the demo's to show, not to raise."""
    while not stop.wait(1 / TRAFFIC_PER_SECOND):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
        except OSError:
            pass


def run_demo(
    listen: str,
    admin: str,
    duration: Optional[float] = None,
    control: str = "127.0.0.1:8470",
    inbound_admin: str = "127.0.0.1:9991",
) -> int:
    from .proxy import Proxy
    from .signals import serve_until_stopped

    backends = {name: Backend(name, zone) for name, zone, _, _ in BACKENDS}
    stop_traffic = threading.Event()
    plane: Optional[ControlPlaneProcess] = None
    try:
        with tempfile.TemporaryDirectory(prefix="meshcore-demo-") as tmp:
            work = Path(tmp)
            identity = identity_files(work)
            with Proxy(inbound_config(backends, identity["web"], inbound_admin)) as inbound:
                docs = work / "services"
                docs.mkdir()
                (docs / "web.toml").write_text(services_document(inbound.addresses))
                plane = ControlPlaneProcess(docs, control, work / "control.log")
                config = outbound_config(listen, admin, f"http://{plane.addr}", identity["client"])
                with Proxy(config) as outbound:
                    host, port = outbound.addresses["outbound"]
                    url = f"http://{host}:{port}"
                    print_guide(url, outbound, inbound, plane, docs / "web.toml")
                    threading.Thread(target=send_traffic, args=(url + "/", stop_traffic), daemon=True).start()
                    serve_until_stopped(outbound, duration)
                    stop_traffic.set()
    finally:
        stop_traffic.set()
        if plane is not None:
            plane.stop()
        for b in backends.values():
            b.stop()
    print("demo stopped", flush=True)
    return 0


def print_guide(url: str, outbound: Any, inbound: Any, plane: ControlPlaneProcess, document: Path) -> None:
    out_admin = "http://{}:{}".format(*outbound.admin_address)
    in_admin = "http://{}:{}".format(*inbound.admin_address)
    for name, zone, cluster, service in BACKENDS:
        host, port = inbound.addresses[f"in-{name}"]
        print(f"backend  {name:<10} {zone:<7} {cluster:<5} behind mTLS {host}:{port}  (service {service})")
    print(
        f"""
meshcore demo is running: a small mesh on loopback.
  control plane   {plane.addr}, serving {document} (log: {plane.log})
  outbound proxy  {url} (zone-a, cluster east, identity spiffe://{TRUST_DOMAIN}/{CLIENT_NAME})
  inbound proxy   mTLS only (identity {WEB_ID}), admin {in_admin}
  traffic         {TRAFFIC_PER_SECOND} requests a second through the outbound proxy

Try:
  curl {url}/                     # 90% web, 10% web-v2; web stays in zone-a (cheapest tier)
  curl -H 'x-canary: 1' {url}/    # header route to web-v2
  curl {url}/headers              # what the app gets: meshcore-client-id, the caller's SPIFFE ID
  curl {out_admin}/endpoints          # endpoints from the control plane, their tier and state
  curl {out_admin}/metrics            # Prometheus metrics
  curl {in_admin}/metrics            # the inbound side: every request over mTLS (tls="true")
  meshcore top {out_admin}            # routes and services, live (q quits)
  meshcore tap {out_admin}            # each request as it is answered
  open {out_admin}/ui in a browser: the dashboard
Then edit {document}: delete web-a1's line and traffic moves to zone-b; delete
web-b1's too and it crosses to cluster west.

Press Ctrl-C to stop.""",
        flush=True,
    )
