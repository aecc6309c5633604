"""`meshcore demo --mesh`: the mesh as it runs for real, on hosts in network namespaces (needs
root). `meshcore demo` shows the same mesh on loopback without root.

- a network (meshcore.netns): cluster `east` with zones `zone-a` and `zone-b`, cluster `west`
  with `west-a`; one-way delays of 1 ms within a zone, 5 ms across zones, 30 ms across clusters;
- on each host `meshcore sidecar-init`'s rules and a meshcore sidecar (`sidecar_config`) running
  as uid 1337, its admin API on the host's 127.0.0.1:9990;
- an unmodified app, `meshcore.backend` on port 8080, on one host of each zone: the `web`
  service, reached by the client at its virtual address 10.96.0.10:80;
- the client host (zone-a) running meshcore's load generator against http://10.96.0.10/ at a
  modest rate as an ordinary user: its sidecar balances by zone (same zone first), over mTLS.

Nothing is made in the root namespace, so the admin APIs are reached with `ip netns exec`; the
guide prints those commands. Everything goes when the demo stops (Ctrl-C or `--duration`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from .errors import MeshcoreError
from .sidecar.config import ADMIN, sidecar_config, sidecar_init_args

TRUST_DOMAIN = "demo.mesh"
PROXY_UID = 1337  # the sidecars' uid: their own connections are not redirected
APP_UID = 65534  # the load generator runs as nobody: an ordinary app
APP_PORT = 8080
WEB_ADDRESS = "10.96.0.10:80"
RATE = 10  # requests a second from the client
LATENCY = {"same-zone": "1ms", "cross-zone": "5ms", "cross-cluster": "30ms"}
# host, zone, cluster
WEB_HOSTS = [("web-a1", "zone-a", "east"), ("web-b1", "zone-b", "east"), ("web-west1", "west-a", "west")]
CLIENT = ("client", "zone-a", "east")
READY_TIMEOUT = 30.0

NEEDS_ROOT = (
    "meshcore demo --mesh builds hosts in network namespaces with iptables rules, which needs root: "
    "{reason}. Run it as root (sudo meshcore demo --mesh), or run `meshcore demo` for the same mesh "
    "(mTLS, zones, a second cluster) on loopback without root."
)


def unavailable() -> Optional[str]:
    """Why the mesh demo cannot run here, or None."""
    from .netns import unavailable as netns_unavailable

    reason = netns_unavailable()
    if reason is not None:
        return NEEDS_ROOT.format(reason=reason)
    if not (shutil.which("iptables-nft") or shutil.which("iptables")):
        return "meshcore demo --mesh needs iptables for sidecar-init (apt-get install iptables)"
    if not shutil.which("curl"):
        return "meshcore demo --mesh prints curl commands to try; install curl (apt-get install curl)"
    return None


def identities(directory: Path) -> dict[str, dict[str, str]]:
    """A CA and a certificate for each sidecar: ns/demo/sa/web for the web hosts (one service
    account, as a Deployment's pods share one), ns/demo/sa/client for the client."""
    from .identity.ca import init_ca, issue

    ca = directory / "ca"
    init_ca(ca, trust_domain=TRUST_DOMAIN)
    files = {}
    for who in ("web", "client"):
        issue(ca, f"ns/demo/sa/{who}", ttl=timedelta(hours=24), out_prefix=directory / who)
        files[who] = {
            "trust_anchors": str(ca / "trust-anchor.pem"),
            "cert": str(directory / f"{who}.crt"),
            "key": str(directory / f"{who}.key"),
        }
    return files


def spiffe_id(who: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/{who}"


class MeshDemo:
    """The running demo: its network, hosts and processes (stopped with the network)."""

    def __init__(self, work: Path):
        from .netns import Network

        self.work = work
        self.net = Network(latency=LATENCY)
        self.app_pids: dict[str, int] = {}

    def close(self) -> None:
        self.net.close()

    def build(self) -> None:
        files = identities(self.work)
        web_endpoints = []
        for name, zone, cluster in WEB_HOSTS:
            host = self.net.host(name, zone=zone, cluster=cluster)
            app = [sys.executable, "-m", "meshcore.backend", f"0.0.0.0:{APP_PORT}", "--name", name]
            proc = self._start(host, [*app, "--zone", zone], rf"backend {name} on", log="app")
            self.app_pids[name] = proc.pid
            config = sidecar_config(
                files["web"], app_ports=[APP_PORT], policy={"default": "all-authenticated"}
            )
            self._sidecar(host, config)
            web_endpoints.append(
                {
                    "addr": f"{host.addr}:{APP_PORT}",
                    "zone": zone,
                    "cluster": cluster,
                    "identity": spiffe_id("web"),
                }
            )
        name, zone, cluster = CLIENT
        client = self.net.host(name, zone=zone, cluster=cluster)
        web = {"name": "web", "balancer": "zonal", "addresses": [WEB_ADDRESS], "endpoints": web_endpoints}
        self._sidecar(client, sidecar_config(files["client"], services=[web], zone=zone, cluster=cluster))

    def _start(
        self, host: Any, argv: list[str], ready: str, log: str, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Starts `argv` on `host`, its output to HOST-LOG.log in the work directory, and waits
        for the line saying it is ready."""
        path = self.work / f"{host.name}-{log}.log"
        with open(path, "w") as out:
            proc: subprocess.Popen[Any] = host.popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        deadline = time.monotonic() + READY_TIMEOUT
        while not re.search(ready, path.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                what = "exited" if proc.poll() is not None else f"not ready in {READY_TIMEOUT:g} s"
                raise MeshcoreError(f"{host.name}: {' '.join(argv)} {what}: {path.read_text().strip()}")
            time.sleep(0.05)
        return proc

    def _sidecar(self, host: Any, config: dict[str, Any]) -> None:
        """sidecar-init's rules, then meshcore as PROXY_UID with its config and state in a
        directory it owns."""
        home = self.work / f"{host.name}-sidecar"
        home.mkdir()
        os.chown(home, PROXY_UID, PROXY_UID)
        path = home / "sidecar.yaml"  # JSON is YAML; `meshcore run` reads a file by its suffix
        path.write_text(json.dumps(config, indent=2))
        host.run([sys.executable, "-m", "meshcore", "sidecar-init", *sidecar_init_args(PROXY_UID)])
        # dac_read_search: Python and this directory may sit where uid 1337 cannot read (/root).
        run = [sys.executable, "-m", "meshcore", "run", str(path)]
        self._start(host, run, "meshcore: ready", log="sidecar", user=PROXY_UID, caps=["dac_read_search"])

    def start_traffic(self, duration: Optional[float]) -> None:
        """meshcore's load generator on the client, as an ordinary user (its connections are
        intercepted), for the demo's duration (a day when it runs until Ctrl-C)."""
        seconds = int(duration + 60) if duration is not None else 86_400
        bench = [sys.executable, "-m", "meshcore", "bench", f"http://{WEB_ADDRESS}/"]
        argv = [*bench, "--rate", str(RATE), "--connections", "2", "--duration", f"{seconds}s"]
        log = self.work / "client-loadgen.log"
        with open(log, "w") as out:
            self.net.hosts["client"].popen(
                argv, user=APP_UID, caps=["dac_read_search"], stdout=out, stderr=subprocess.STDOUT
            )

    def guide(self) -> str:
        client = self.net.hosts["client"]
        lines = ["meshcore demo --mesh is running: hosts in network namespaces, each with a sidecar.", ""]
        for host in self.net.hosts.values():
            role = "client, load generator" if host.name == "client" else f"web app on :{APP_PORT}"
            lines.append(
                f"  {host.name:<10} {host.addr:<12} {host.zone.name:<7} {host.cluster:<5} {role:<24} "
                f"netns {host.ns}"
            )
        a, b = self.net.zone("zone-a"), self.net.zone("zone-b")
        lines += [
            "",
            f"  latency {LATENCY['same-zone']} within a zone, {LATENCY['cross-zone']} across zones, "
            f"{LATENCY['cross-cluster']} across clusters (one way); mTLS between all sidecars",
            f"  traffic {RATE} requests a second from client to web at {WEB_ADDRESS} (zonal balancing)",
            f"  files   {self.work} (configs, logs)",
            "",
            "Try (as root):",
        ]
        tries = [
            (
                f"ip netns exec {client.ns} curl -s http://{WEB_ADDRESS}/",
                "through the client's sidecar: web-a1",
            ),
            (
                f"ip netns exec {client.ns} curl -s http://{WEB_ADDRESS}/headers",
                "the app sees meshcore-client-id",
            ),
            *(
                (f"ip netns exec {host.ns} curl -s http://{ADMIN}/metrics", f"{host.name}'s sidecar")
                for host in self.net.hosts.values()
            ),
            (
                f"ip netns exec {client.ns} curl -s http://{ADMIN}/endpoints",
                "web's endpoints and their tiers",
            ),
            (
                f"ip netns exec {a.ns} cat /sys/class/net/{a.link_to(b)}/statistics/tx_bytes",
                "bytes zone-a sent to zone-b",
            ),
            (f"kill {self.app_pids['web-a1']}", "stop web-a1's app: traffic moves to zone-b"),
        ]
        width = max(len(command) for command, _ in tries)
        lines += [f"  {command:<{width}}  # {why}" for command, why in tries]
        lines += [
            "",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(lines)


def run_mesh_demo(duration: Optional[float] = None) -> int:
    from .netns import sweep
    from .signals import handle_signals

    reason = unavailable()
    if reason is not None:
        raise MeshcoreError(reason)
    stop = handle_signals()  # before anything is built: Ctrl-C from here on cleans up
    sweep()  # what a killed run (of this demo or the tests) left
    with tempfile.TemporaryDirectory(prefix="meshcore-demo-mesh-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        demo = MeshDemo(work)
        try:
            print("building the network (hosts, sidecars, apps)...", flush=True)
            demo.build()
            demo.start_traffic(duration)
            print(demo.guide(), flush=True)
            wait(stop, duration)
        finally:
            demo.close()
    print("demo stopped: network namespaces and processes removed", flush=True)
    return 0


def wait(stop: threading.Event, duration: Optional[float]) -> None:
    """Until SIGINT/SIGTERM or `duration` seconds (a signal ends each wait at once on POSIX)."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        stop.wait(5.0 if left is None else min(left, 5.0))
