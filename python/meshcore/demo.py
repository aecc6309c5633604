"""`meshcore demo`: a small local mesh to look at."""

from __future__ import annotations

from typing import Optional

from .backend import Backend


def demo_config(backends: dict[str, list[Backend]], listen: str, admin: str) -> dict:
    return {
        "admin": admin,
        "zone": "zone-a",
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
        "services": [
            {
                "name": name,
                "balancer": "peak-ewma",
                "protocol": "http1",  # the demo backends speak HTTP/1.1 only
                "endpoints": [{"addr": b.addr, "zone": b.zone} for b in group],
            }
            for name, group in backends.items()
        ],
    }


def run_demo(listen: str, admin: str, duration: Optional[float] = None) -> int:
    from .proxy import Proxy
    from .signals import serve_until_stopped

    backends = {
        "web": [
            Backend("web-a1", "zone-a"),
            Backend("web-a2", "zone-a"),
            Backend("web-b1", "zone-b"),
            Backend("web-b2", "zone-b"),
        ],
        "web-v2": [Backend("web-v2-a1", "zone-a")],
    }
    try:
        with Proxy(demo_config(backends, listen, admin)) as proxy:
            host, port = proxy.addresses["outbound"]
            ahost, aport = proxy.admin_address or ("", 0)
            for name, group in backends.items():
                for b in group:
                    print(f"backend  {b.name:<10} {b.zone:<7} http://{b.addr}  (service {name})")
            print(
                f"""
meshcore demo is running: 5 backends in zone-a and zone-b behind one proxy.

Try:
  curl http://{host}:{port}/                     # 90% web, 10% web-v2, peak-EWMA across zones
  curl -H 'x-canary: 1' http://{host}:{port}/    # header route to web-v2
  curl --http2-prior-knowledge http://{host}:{port}/hello
  curl http://{ahost}:{aport}/metrics            # Prometheus metrics
  curl http://{ahost}:{aport}/endpoints          # balancer state per endpoint
  curl http://{ahost}:{aport}/config             # the active config

Press Ctrl-C to stop.""",
                flush=True,
            )
            serve_until_stopped(proxy, duration)
    finally:
        for group in backends.values():
            for b in group:
                b.stop()
    print("demo stopped", flush=True)
    return 0
