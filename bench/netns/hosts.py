"""What bench/netns/latency and bench/netns/transparent share: two hosts of the netns
harness with no delay between them, certificates from meshcore's CA, nginx as the app,
processes pinned, and meshcore's load generator run inside a host.

The network: `meshcore.netns.Network()` with no latency classes, both hosts in one zone.
The harness then starts no delay process and writes no NFQUEUE rule (`check_no_delay`
verifies it on every router), so a packet between the hosts crosses two veths and one
kernel forward in the zone's router namespace, nothing in user space.

Pinning (2 cores): `PINNING` names the two layouts the scripts offer. "proxies", as the
other benches: every proxy on CPU 1, the load generator and the app (nginx, one worker) on
CPU 0. "hosts": each host its own core, as two machines would have: the client's load
generator and outbound proxy on CPU 0, the server's inbound proxy and app on CPU 1.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from peers import children, make_certs, proc_cpu, steal_seconds, system_busy  # noqa: E402
from proxy_load import pinned  # noqa: E402

from meshcore.netns import Host, Network, unavailable  # noqa: E402

__all__ = [
    "Host",
    "Network",
    "make_certs",
    "proc_cpu",
    "pinned",
    "PINNING",
    "Usage",
    "SPIFFE_ID",
    "need_root",
    "raise_priority",
    "check_no_delay",
    "env",
    "start",
    "wait_listening",
    "start_app",
    "load",
    "median",
]

PINNING = {
    "hosts": {"load": 0, "outbound": 0, "inbound": 1, "app": 1},
    "proxies": {"load": 0, "outbound": 1, "inbound": 1, "app": 0},
}
# make_certs issues one identity, used by every proxy of every pair.
SPIFFE_ID = "spiffe://bench.local/ns/bench/sa/proxy"


def raise_priority(nice: int) -> str:
    """Runs this process, and so every process it starts, at `nice` (negative: ahead of others):
    on a shared machine, unpinned processes of others land on the bench's cores too."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return f"every process of the bench at nice {nice}"


def need_root() -> None:
    why = unavailable()
    if why:
        sys.exit(f"this bench builds hosts in network namespaces: {why}")


def check_no_delay(net: Network) -> str:
    """Fails unless no router delays packets (no NFQUEUE rule, no delay process); says how it checked."""
    if any(net.delay_us.values()):
        raise SystemExit(f"the network has delays {net.delay_us}; this bench needs none")
    for zone in net.zones.values():
        rules = zone.run(["iptables", "-w", "-S"]).stdout
        if "NFQUEUE" in rules:
            raise SystemExit(f"router {zone.ns} sends packets to NFQUEUE:\n{rules}")
        if zone._procs:
            raise SystemExit(f"router {zone.ns} runs a process (a delay queue?): {zone._procs}")
    return "no delay: the routers hold no NFQUEUE rule and run no delay process (checked)"


def env() -> dict[str, str]:
    """The environment for meshcore processes: this one's, so they run the meshcore installed here."""
    return dict(os.environ)


def start(host: Host, cpu: int, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """`argv` in `host`, pinned to `cpu`, output to `log`. `ip netns exec` and taskset exec
    what they run, so the pid is the program's own (its CPU time is read from /proc)."""
    out = open(log, "wb")  # noqa: SIM115 - the child holds it
    return host.popen(pinned(cpu, argv), stdout=out, stderr=subprocess.STDOUT, env=env(), **kwargs)


def wait_listening(host: Host, addr: str, port: int, proc: subprocess.Popen, log: Path, timeout=30.0) -> None:
    """Until a TCP connection to addr:port from inside `host` succeeds (as root: not redirected
    by sidecar-init when root is the proxy's uid), or `proc` died."""
    probe = f"import socket; socket.create_connection(({addr!r}, {port}), timeout=0.5).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(map(str, proc.args))} exited {proc.returncode}:\n{log.read_text()}")
        if host.run([sys.executable, "-c", probe], check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(
        f"{host.name}: nothing listens on {addr}:{port} after {timeout:.0f}s:\n{log.read_text()}"
    )


def start_app(host: Host, tmp: Path, bind: str, cpu: int) -> subprocess.Popen:
    """nginx, one worker, answering "ok" on `bind` (keep-alive without limit), on `cpu`."""
    root = tmp / f"app-{host.name}"
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {root}/pid; error_log {root}/err;\n"
        "events { worker_connections 8192; }\n"
        "http { access_log off; keepalive_requests 1000000;\n"
        f'  server {{ listen {bind} reuseport; location / {{ return 200 "ok\\n"; }} }} }}\n'
    )
    proc = start(host, cpu, ["nginx", "-c", str(conf), "-p", str(root)], root / "out.log")
    addr, port = bind.rsplit(":", 1)
    wait_listening(host, "127.0.0.1" if addr == "0.0.0.0" else addr, int(port), proc, root / "out.log")
    return proc


def load(
    host: Host,
    url: str,
    *,
    duration: float,
    connections: int,
    cpu: int,
    rate: float | None = None,
    user: int | None = None,
) -> dict:
    """`meshcore bench --json` from inside `host` on `cpu` (as `user` if given: a uid whose
    connections sidecar-init redirects). Constant rate with `rate`, else as fast as it can."""
    argv = [sys.executable, "-m", "meshcore", "bench", url, "--duration", f"{duration:g}s"]
    argv += ["--connections", str(connections), "--json"]
    if rate is not None:
        argv += ["--rate", f"{rate:g}"]
    # Another uid cannot start Python kept under /root (mode 700) without dac_read_search.
    caps = ["dac_read_search"] if user is not None else []
    done = host.run(pinned(cpu, argv), user=user, caps=caps, check=False, env=env(), timeout=duration + 60)
    if done.returncode != 0:
        raise SystemExit(f"meshcore bench {url} from {host.name} exited {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout)


class Usage:
    """CPU time over one measurement: the proxies' (`pids`), the app's, the load generator's
    (this process's waited-for children) and the whole machine's. What the machine spent beyond
    those is "other": the kernel's packet work outside process time (softirq) and whatever else
    ran on this shared machine; "steal" is time the hypervisor took."""

    def __init__(self, pids: list[int], app_pid: int):
        self.pids, self.app = pids, children(app_pid)
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float, float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            time.monotonic(),
            proc_cpu(self.pids),
            proc_cpu(self.app),
            kids.ru_utime + kids.ru_stime,
            system_busy(),
            steal_seconds(),
        )

    def done(self, requests: int) -> dict:
        end = self._read()
        wall, proxies, app, load, busy, steal = (b - a for a, b in zip(self._start, end))
        return {
            "cpu_us_per_req": proxies / max(requests, 1) * 1e6 if self.pids else None,
            "other_cpu_pct": (busy - proxies - app - load) / wall * 100,
            "steal_ms": steal * 1000,
        }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
