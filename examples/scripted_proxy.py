#!/usr/bin/env python3
"""A whole proxy built in Python, no TOML: two services and a plugin that sends
requests carrying the cookie `canary=1` to the canary.

    python examples/scripted_proxy.py            # serve until Ctrl-C
    python examples/scripted_proxy.py --check    # send a few requests, verify, exit
"""

from __future__ import annotations

import argparse
import signal
import threading
from http.cookies import SimpleCookie

import meshcore
from meshcore.backend import Backend


class CanaryByCookie:
    """Routes to `web-canary` when the request has the cookie canary=1."""

    def on_request(self, req: meshcore.Request) -> None:
        cookie = SimpleCookie(req.headers.get("cookie", ""))
        if "canary" in cookie and cookie["canary"].value == "1":
            req.service = "web-canary"


def build(stable: Backend, canary: Backend, listen: str) -> meshcore.Proxy:
    proxy = meshcore.Proxy(
        {
            "listeners": [{"name": "web", "bind": listen}],
            "routes": [{"name": "web", "listener": "web", "backends": [{"service": "web"}]}],
            "services": [
                {"name": "web", "protocol": "http1", "endpoints": [{"addr": stable.addr, "zone": "zone-a"}]},
                {
                    "name": "web-canary",
                    "protocol": "http1",
                    "endpoints": [{"addr": canary.addr, "zone": "zone-a"}],
                },
            ],
        }
    )
    proxy.add_plugin(CanaryByCookie(), routes=["web"])
    return proxy


def check(proxy: meshcore.Proxy) -> None:
    import httpx

    url = proxy.url("web", "/")
    with httpx.Client() as client:
        plain = client.get(url).headers["x-backend"]
        canary = client.get(url, headers={"cookie": "session=abc; canary=1"}).headers["x-backend"]
    assert (plain, canary) == ("stable", "canary"), (plain, canary)
    print(f"ok: no cookie -> {plain}, canary=1 -> {canary}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stable, canary = Backend("stable", "zone-a"), Backend("canary", "zone-a")
    try:
        with build(stable, canary, args.listen) as proxy:
            if args.check:
                check(proxy)
                return 0
            print(f"scripted proxy on {proxy.url('web', '/')}  (try: curl -b canary=1 ...)", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
    finally:
        stable.stop()
        canary.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
