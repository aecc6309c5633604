"""A transparent sidecar (#19): in a network namespace with `meshcore sidecar-init`'s rules, an
unmodified client (curl, as another user) calls ordinary addresses and meshcore serves each
connection by its original destination: a service's virtual address is balanced over its
endpoints, an endpoint's own address goes to that endpoint, a server-speaks-first port skips
detection, and anything else passes through as TCP under the egress policy. Inbound, a peer's
connection to the app's port reaches the app through the inbound listener."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OutputLines, require_tool, wait_until

MESHCORE = [sys.executable, "-m", "meshcore"]
APP_UID = 65534  # the app runs as nobody; the proxy as root (its uid is skipped)
OUT_PORT, IN_PORT = 4140, 4143
BANNER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"220 banner first\n"); c.close()
"""
_names = itertools.count()


def unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run these tests (as root, with network namespaces)")
    pytest.skip(why)


class Pod:
    """`app` (the client, the sidecar, sidecar-init's rules, an app on 127.0.0.1:8080) and `peer`
    (the other hosts: 10.9.0.2-5 on its loopback), joined by a veth pair; app routes 10.9.0.0/24
    and the virtual range 10.96.0.0/16 through peer."""

    def __init__(self, tmp: Path):
        tag = f"mc-tp{os.getpid()}-{next(_names)}"
        self.app, self.peer = f"{tag}-app", f"{tag}-peer"
        self.tmp = tmp
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        for ns in (self.app, self.peer):
            if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
                self.close()
                unavailable("cannot create network namespaces here (`ip netns add` failed)")
            self.made.append(ns)
        veth = f"t{os.getpid() % 100000}x{tag.rsplit('-', 1)[1]}"
        self.ip(
            self.app, "link", "add", veth, "type", "veth", "peer", "name", "p" + veth[1:], "netns", self.peer
        )
        for ns, dev, addr in ((self.app, veth, "10.77.0.1"), (self.peer, "p" + veth[1:], "10.77.0.2")):
            self.ip(ns, "link", "set", "lo", "up")
            self.ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(ns, "link", "set", dev, "up")
        for last in (2, 3, 4, 5):
            self.ip(self.peer, "addr", "add", f"10.9.0.{last}/32", "dev", "lo")
        for net in ("10.9.0.0/24", "10.96.0.0/16"):
            self.ip(self.app, "route", "add", net, "via", "10.77.0.2")

    def ip(self, ns: str, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True)

    def run(self, ns: str, *argv: str, uid: int | None = None) -> subprocess.CompletedProcess:
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
        return subprocess.run(
            ["ip", "netns", "exec", ns, *drop, *argv], capture_output=True, text=True, timeout=30
        )

    def start(self, ns: str, *argv: str, ready: str) -> OutputLines:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.procs.append(proc)
        out = OutputLines(proc.stdout)
        out.wait_for(ready)
        return out

    def backend(self, ns: str, addr: str, name: str) -> None:
        self.start(
            ns, sys.executable, "-m", "meshcore.backend", addr, "--name", name, ready=f"backend {name} on"
        )

    def curl(
        self, *args: str, ns: str | None = None, uid: int | None = APP_UID
    ) -> subprocess.CompletedProcess:
        """curl in `ns` (the app's by default) as the app's user: its connections are intercepted."""
        return self.run(ns or self.app, "curl", "-s", "--max-time", "10", *args, uid=uid)

    def metrics(self, admin: str) -> str:
        return self.curl(f"http://{admin}/metrics", uid=None).stdout

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def pod(tmp_path):
    if os.geteuid() != 0:
        unavailable("network namespaces and iptables need root (CI runs as root)")
    require_tool("ip", "iproute2")
    require_tool("iptables-nft", "iptables")
    require_tool("setpriv", "util-linux")
    require_tool("curl", "curl")
    made = Pod(tmp_path)
    yield made
    made.close()


CONFIG = f"""
admin = "127.0.0.1:9990"

[[listeners]]
name = "outbound"
bind = "127.0.0.1:{OUT_PORT}"
transparent = true
opaque_ports = [5432]

[[listeners]]
name = "inbound"
bind = "0.0.0.0:{IN_PORT}"
direction = "inbound"
transparent = true

[[services]]
name = "web"
protocol = "http1"
addresses = ["10.96.0.10:80"]
endpoints = [{{ addr = "10.9.0.2:8080" }}, {{ addr = "10.9.0.3:8080" }}]

[[services]]
name = "db"
addresses = ["10.96.0.20:5432"]
endpoints = [{{ addr = "10.9.0.5:5432" }}]

[[services]]
name = "app"                  # the app behind this sidecar: any address on its port
protocol = "http1"
addresses = ["0.0.0.0:8080"]
endpoints = [{{ addr = "127.0.0.1:8080" }}]

[egress]
default = "allow"
[[egress.rules]]
action = "deny"
networks = ["10.9.0.4/32"]
ports = [9001]
"""


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_an_unmodified_client_is_served_by_its_original_destination(pod, tmp_path):
    pod.backend(pod.peer, "10.9.0.2:8080", "web-1")
    pod.backend(pod.peer, "10.9.0.3:8080", "web-2")
    pod.backend(pod.peer, "10.9.0.4:9000", "outside")
    pod.backend(pod.peer, "10.9.0.4:9001", "forbidden")
    banner = tmp_path / "banner.py"
    banner.write_text(BANNER)
    pod.start(pod.peer, sys.executable, str(banner), "10.9.0.5", "5432", ready="ready")
    pod.backend(pod.app, "127.0.0.1:8080", "app")
    init = [*MESHCORE, "sidecar-init", "--proxy-uid", "0", "--outbound-port", str(OUT_PORT)]
    done = pod.run(pod.app, *init, "--inbound-port", str(IN_PORT), "--skip-ports", "9990")
    assert done.returncode == 0, done.stderr
    config = tmp_path / "sidecar.toml"
    config.write_text(CONFIG)
    pod.start(pod.app, *MESHCORE, "run", str(config), ready="meshcore: admin on")

    # A service's virtual address: balanced over its endpoints, as HTTP (the request is counted).
    seen: set[str] = set()

    def both_endpoints_answered() -> bool:
        r = pod.curl("-D", "-", "http://10.96.0.10/hello")
        assert "HTTP/1.1 200" in r.stdout, r
        seen.add(re.search(r"(?im)^x-backend: (\S+)", r.stdout).group(1))
        return seen == {"web-1", "web-2"}

    wait_until(both_endpoints_answered, what="both of web's endpoints")
    # An endpoint's own address: that endpoint, every time.
    for _ in range(5):
        r = pod.curl("-D", "-", "http://10.9.0.3:8080/")
        assert re.search(r"(?im)^x-backend: web-2", r.stdout), r
    # A server-speaks-first port is carried as TCP at once, without waiting for the client.
    r = pod.run(pod.app, "bash", "-c", "exec 3<>/dev/tcp/10.96.0.20/5432; head -1 <&3", uid=APP_UID)
    assert r.stdout.strip() == "220 banner first", r
    # Outside the mesh: passed through, unless the egress policy denies it.
    assert "hello from outside" in pod.curl("http://10.9.0.4:9000/").stdout
    assert pod.curl("http://10.9.0.4:9001/").returncode != 0, "denied by [egress]"
    # Inbound: a peer calling the app's port reaches the app through the inbound listener.
    r = pod.curl("-D", "-", "http://10.77.0.1:8080/", ns=pod.peer, uid=None)
    assert re.search(r"(?im)^x-backend: app", r.stdout), r

    text = pod.metrics("127.0.0.1:9990")
    assert metric(text, "request_total", direction="outbound", dst_service="web", route="to-web") >= 7
    assert metric(text, "request_total", direction="inbound", dst_service="app") == 1
    assert metric(text, "tcp_passthrough_total", listener="outbound", decision="allowed") == 1
    assert metric(text, "tcp_passthrough_total", listener="outbound", decision="denied") == 1
    # The banner went through the db service as TCP: no HTTP request was counted for it.
    assert metric(text, "request_total", dst_service="db") == 0


def test_transparent_config_is_checked():
    from meshcore import ConfigError
    from meshcore.config import load

    listener = {"name": "out", "bind": "127.0.0.1:0"}
    with pytest.raises(ConfigError, match="need transparent = true"):
        load({"listeners": [{**listener, "opaque_ports": [5432]}]})
    with pytest.raises(ConfigError, match=r"services\[1\].addresses\[0\]: 10.96.0.10:80 is service 'a'"):
        load(
            {
                "services": [
                    {"name": "a", "addresses": ["10.96.0.10:80"]},
                    {"name": "b", "addresses": ["10.96.0.10:80"]},
                ]
            }
        )
    with pytest.raises(ConfigError, match="egress.rules"):
        load({"egress": {"rules": [{"action": "allow", "networks": ["10.0.0.0/8"], "ports": ["9-1"]}]}})
