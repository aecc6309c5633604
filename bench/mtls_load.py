#!/usr/bin/env python3
"""The cost of mTLS between proxies, and the handshake rate.

    python bench/mtls_load.py [--duration 10] [--connections 50]

wrk -> outbound meshcore -> inbound meshcore -> nginx, once with plaintext
between the proxies and once with mTLS (TLS 1.3, ECDSA P-256, HTTP/2 between
the proxies). Both proxies run `workers = 1`; the four processes share the two
cores (no pinning: there are more busy processes than cores). Reports req/s,
p50/p99 and the two proxies' CPU per request, then the inbound proxy's
full-handshake rate: new mutual TLS 1.3 connections per second from 4 client
threads, each carrying one request. Needs nginx and wrk (bench/setup).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxy_load import cpu_seconds, free_port, run_wrk, start_nginx, wait_port  # noqa: E402

from meshcore import identity  # noqa: E402


def start_proxy(tmp: Path, name: str, cfg: dict) -> subprocess.Popen:
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore.cli", "run", str(path)], stdout=subprocess.DEVNULL
    )
    for listener in cfg["listeners"]:
        wait_port(int(listener["bind"].rsplit(":", 1)[1]))
    return proc


def pair(tmp: Path, backend_port: int, mtls: bool) -> tuple[list[subprocess.Popen], int, int]:
    inbound_port, outbound_port = free_port(), free_port()
    ca = tmp / "ca"
    ident = lambda who: {  # noqa: E731
        "trust_anchors": str(ca / "trust-anchor.pem"),
        "cert": str(tmp / f"{who}.crt"),
        "key": str(tmp / f"{who}.key"),
    }
    inbound = {
        "workers": 1,
        "listeners": [
            {
                "name": "inbound",
                "bind": f"127.0.0.1:{inbound_port}",
                "direction": "inbound",
                "tls": "mesh" if mtls else "none",
            }
        ],
        "routes": [{"listener": "inbound", "backends": [{"service": "app"}]}],
        "services": [
            {"name": "app", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{backend_port}"}]}
        ],
    }
    endpoint = {"addr": f"127.0.0.1:{inbound_port}"}
    if mtls:
        inbound["identity"] = ident("api")
        endpoint["identity"] = identity.spiffe_id("mesh.local", "ns/default/sa/api")
    outbound = {
        "workers": 1,
        "listeners": [{"name": "outbound", "bind": f"127.0.0.1:{outbound_port}"}],
        "routes": [{"listener": "outbound", "backends": [{"service": "api"}]}],
        # Plaintext pairs also speak HTTP/2 between proxies, so only TLS differs.
        "services": [{"name": "api", "protocol": "http2", "endpoints": [endpoint]}],
    }
    if mtls:
        outbound["identity"] = ident("web")
    procs = [start_proxy(tmp, f"in-{mtls}", inbound), start_proxy(tmp, f"out-{mtls}", outbound)]
    return procs, outbound_port, inbound_port


def handshake_rate(tmp: Path, port: int, seconds: int, threads: int = 4) -> float:
    """New mutual TLS 1.3 connections per second, each proven by one HTTP request.

    (openssl s_time cannot send the intermediate with the client certificate,
    so the client here is Python's ssl module, i.e. OpenSSL as well.)
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(tmp / "ca" / "trust-anchor.pem")
    ctx.load_cert_chain(tmp / "web.crt", tmp / "web.key")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    deadline = time.monotonic() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        identity.init_ca(tmp / "ca", trust_domain="mesh.local")
        for who in ("web", "api"):
            identity.issue(tmp / "ca", f"ns/default/sa/{who}", out_prefix=str(tmp / who))
        h1, h2 = free_port(), free_port()
        nginx = start_nginx(tmp, h1, h2)
        try:
            for mtls in (False, True):
                procs, port, inbound_port = pair(tmp, h1, mtls)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    run_wrk(url, args.connections, 2)  # warm-up
                    before = [cpu_seconds(p.pid) for p in procs]
                    r = run_wrk(url, args.connections, args.duration)
                    used = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before))
                    r["cpu_us_per_req_both_proxies"] = used / max(r["requests"], 1) * 1e6
                    if mtls:
                        r["handshakes_per_s"] = handshake_rate(tmp, inbound_port, min(args.duration, 5))
                    results["mtls" if mtls else "plaintext"] = r
                    print(("mtls" if mtls else "plaintext"), json.dumps(r), flush=True)
                finally:
                    for p in procs:
                        p.send_signal(signal.SIGTERM)
                        p.wait(15)
        finally:
            nginx.terminate()
            nginx.wait(5)
    plain, mtls = results["plaintext"], results["mtls"]
    report = (
        "\n".join(
            [
                f"# mTLS between proxies ({args.connections} connections, {args.duration}s; "
                "wrk -> meshcore -> meshcore -> nginx; workers = 1 each; no pinning)",
                "",
                "| between proxies | req/s | p50 ms | p99 ms | CPU µs/req (both proxies) |",
                "|---|---:|---:|---:|---:|",
                *(
                    f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                    f"{r['cpu_us_per_req_both_proxies']:.1f} |"
                    for name, r in results.items()
                ),
                f"| mTLS / plaintext | {mtls['rps'] / plain['rps']:.2f} | "
                f"{mtls['p50_ms'] / plain['p50_ms']:.2f} | "
                f"{mtls['p99_ms'] / plain['p99_ms']:.2f} | "
                f"{mtls['cpu_us_per_req_both_proxies'] / plain['cpu_us_per_req_both_proxies']:.2f} |",
                "",
                f"New mutual TLS 1.3 connections (one request each) against the inbound proxy: "
                f"{mtls['handshakes_per_s']:.0f}/s "
                "(4 Python/OpenSSL client threads; the client side is the limit)",
            ]
        )
        + "\n"
    )
    (out / "mtls.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
