#!/usr/bin/env python3
"""Two meshcore proxies against two Envoys: client -> proxy -> mTLS -> proxy -> backend.

    bench/peers/setup && python bench/peers_mtls.py [--duration 10] [--rounds 2]

Each pair: an outbound proxy taking plaintext HTTP/1.1 from wrk and
speaking mutual TLS 1.3 over HTTP/2 to an inbound proxy, which verifies the
caller against the mesh trust anchor and forwards HTTP/1.1 to nginx. The
outbound side checks the inbound's SPIFFE ID (Envoy: a URI SAN matcher). One
worker per proxy; both proxies of a pair on CPU 1, wrk and nginx on CPU 0.
Rounds are interleaved; each measure's median over them is reported, with the CPU of both
proxies per request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers import make_certs, proc_cpu, rss_mb, start_backend, stop_all  # noqa: E402
from proxy_load import free_port, median_measures, pinned, run_wrk, wait_port  # noqa: E402

API = "spiffe://bench.local/ns/bench/sa/proxy"


def meshcore_pair(tmp: Path, backend: int, crt: Path, key: Path) -> tuple[list[list[str]], int, list[int]]:
    ca = str(tmp / "ca" / "trust-anchor.pem")
    ident = {"trust_anchors": ca, "cert": str(crt), "key": str(key)}
    inbound_port, outbound_port = free_port(), free_port()
    inbound = {
        "workers": 1,
        "identity": ident,
        "listeners": [
            {"name": "inbound", "bind": f"127.0.0.1:{inbound_port}", "tls": "mesh", "direction": "inbound"}
        ],
        "routes": [{"listener": "inbound", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{backend}"}]}],
        "policy": {"default": "all-authenticated"},
    }
    outbound = {
        "workers": 1,
        "identity": ident,
        "listeners": [{"name": "outbound", "bind": f"127.0.0.1:{outbound_port}"}],
        "routes": [{"listener": "outbound", "backends": [{"service": "api"}]}],
        "services": [{"name": "api", "endpoints": [{"addr": f"127.0.0.1:{inbound_port}", "identity": API}]}],
    }
    cmds = []
    for name, cfg in (("mesh-in", inbound), ("mesh-out", outbound)):
        path = tmp / f"{name}.yaml"
        path.write_text(json.dumps(cfg))
        cmds.append([sys.executable, "-m", "meshcore.cli", "run", str(path)])
    return cmds, outbound_port, [inbound_port, outbound_port]


def _hcm(cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": cluster,
            "codec_type": "AUTO",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
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


def _cluster(name: str, port: int, tls: dict | None = None, h2: bool = False) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def envoy_pair(tmp: Path, backend: int, crt: Path, key: Path) -> tuple[list[list[str]], int, list[int]]:
    ca = str(tmp / "ca" / "trust-anchor.pem")
    inbound_port, outbound_port = free_port(), free_port()
    # Envoy clients default to at most TLS 1.2: both bounds must say 1.3.
    common = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [
            {"certificate_chain": {"filename": str(crt)}, "private_key": {"filename": str(key)}}
        ],
    }
    downstream = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            **common,
            "alpn_protocols": ["h2"],
            "validation_context": {"trusted_ca": {"filename": ca}},
        },
    }
    upstream = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            **common,
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"filename": ca},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": API}}],
            },
        },
    }
    inbound = {
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": inbound_port}},
                    "filter_chains": [
                        {
                            "filters": [_hcm("app")],
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": downstream,
                            },
                        }
                    ],
                }
            ],
            "clusters": [_cluster("app", backend)],
        }
    }
    outbound = {
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": outbound_port}},
                    "filter_chains": [{"filters": [_hcm("api")]}],
                }
            ],
            "clusters": [_cluster("api", inbound_port, upstream, h2=True)],
        }
    }
    cmds = []
    for name, cfg in (("envoy-in", inbound), ("envoy-out", outbound)):
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(cfg))
        cmds.append(
            [
                "envoy",
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--log-level",
                "error",
                "--base-id",
                str(free_port()),
            ]
        )
    return cmds, outbound_port, [inbound_port, outbound_port]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[dict]] = {"meshcore": [], "envoy": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        crt, key, _ = make_certs(tmp)
        backend, backend_port = start_backend(tmp)
        pairs: dict[str, tuple[list[subprocess.Popen], int]] = {}
        try:
            for name, build in (("meshcore", meshcore_pair), ("envoy", envoy_pair)):
                cmds, entry, ports = build(tmp, backend_port, crt, key)
                procs = [
                    subprocess.Popen(pinned(1, c), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for c in cmds
                ]
                for port in ports:
                    wait_port(port, timeout=30)
                pairs[name] = (procs, entry)
            for _procs, entry in pairs.values():  # warm-up
                run_wrk(f"http://127.0.0.1:{entry}/", args.connections, 2)
            for _ in range(args.rounds):
                for name, (procs, entry) in pairs.items():
                    pids = [p.pid for p in procs]
                    before = proc_cpu(pids)
                    r = run_wrk(f"http://127.0.0.1:{entry}/", args.connections, args.duration)
                    r["cpu_us_per_req"] = (proc_cpu(pids) - before) / max(r["requests"], 1) * 1e6
                    r["rss_mb"] = rss_mb(pids)
                    rounds[name].append(r)
                    print(name, json.dumps(r), flush=True)
        finally:
            stop_all([p for procs, _ in pairs.values() for p in procs])
            backend.terminate()
            backend.wait(5)
    m, e = median_measures(rounds["meshcore"]), median_measures(rounds["envoy"])
    report = (
        "\n".join(
            [
                f"# Two proxies with mTLS between them: meshcore pair vs Envoy pair ({args.connections} connections, "
                f"{args.duration}s x {args.rounds} rounds, median)",
                "",
                "| pair | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req (both) | RSS MB (both) | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
                *(
                    f"| {n} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | "
                    f"{r['cpu_us_per_req']:.1f} | {r['rss_mb']:.1f} | {r['errors']} |"
                    for n, r in (("meshcore", m), ("envoy", e))
                ),
                f"| meshcore / envoy | {m['rps'] / e['rps']:.2f} | | {m['p99_ms'] / e['p99_ms']:.2f} | | "
                f"{m['cpu_us_per_req'] / e['cpu_us_per_req']:.2f} | | |",
            ]
        )
        + "\n"
    )
    (out / "peers_mtls.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
