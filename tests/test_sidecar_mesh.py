"""Two meshed hosts (#19): `client` and `server` in two zones of a namespace network, each with
`meshcore sidecar-init`'s rules and a meshcore sidecar running as its own uid, and unmodified
apps (curl, meshcore.backend, hypercorn, a grpcio server, a banner server) calling ordinary
addresses. Between the sidecars every hop is mTLS: the server's app sees the client sidecar's
SPIFFE ID, and the server sidecar counts the requests with tls="true". A third host, `outside`,
has no sidecar: the client reaches it through the egress policy or not at all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netns_helpers import LATENCY, metric, require_netns

from conftest import MESHCORE, OutputLines, require_tool, wait_until
from mesh_helpers import identity_files, issue, make_ca
from meshcore.errors import ConfigError
from meshcore.netns import Host, Network, sweep
from meshcore.sidecar.config import ADMIN, app_service_name, sidecar_config, sidecar_init_args

TESTS = Path(__file__).resolve().parent
PROXY_UID = 1337  # the sidecars' uid: their own connections are not redirected
APP_UID = 65534  # the client app (curl, a gRPC client) runs as nobody
CLIENT_ID = "spiffe://mesh.local/ns/default/sa/client"
SERVER_ID = "spiffe://mesh.local/ns/default/sa/server"
# The server's apps, and the virtual address (a ClusterIP) the client knows each by.
HTTP1_PORT, H2_PORT, GRPC_PORT, DB_PORT = 8080, 8081, 50051, 5432
VIRTUAL = {
    "web": "10.96.0.10:80",
    "h2": "10.96.0.11:80",
    "grpc": f"10.96.0.12:{GRPC_PORT}",
    "db": f"10.96.0.20:{DB_PORT}",
}
TARGET = {"web": HTTP1_PORT, "h2": H2_PORT, "grpc": GRPC_PORT, "db": DB_PORT}
OUTSIDE_ALLOWED, OUTSIDE_DENIED = 9000, 9001

BANNER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"220 banner first\n"); c.close()
"""

GRPC_SERVER = r"""
import concurrent.futures, sys, grpc
def who(request, context):
    meta = dict(context.invocation_metadata())
    return meta.get("meshcore-client-id", "none").encode() + b" " + request[::-1]
handler = grpc.method_handlers_generic_handler("test.Who", {"Ask": grpc.unary_unary_rpc_method_handler(who)})
server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""

GRPC_CLIENT = r"""
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    print(channel.unary_unary("/test.Who/Ask")(b"olleh", timeout=10).decode())
"""


@dataclass
class Mesh:
    net: Network
    client: Host
    server: Host
    outside: Host
    scripts: Path
    sidecars: dict[str, OutputLines] = field(default_factory=dict)

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        """curl on the client as its app's user: its connections are intercepted."""
        return self.client.run(["curl", "-sS", "--max-time", "10", *args], user=APP_UID, check=False)

    def metrics(self, host: Host) -> str:
        return host.run(["curl", "-sS", "--max-time", "10", f"http://{ADMIN}/metrics"]).stdout


def start(host: Host, argv: list[str], ready: str, **kwargs) -> OutputLines:
    """Starts `argv` on `host` and waits for its line saying it is ready."""
    proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    out = OutputLines(proc.stdout)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{host.name}: {argv} exited {proc.returncode}: {out.text()}")
        return any(re.search(ready, line) for line in out.lines)

    wait_until(up, 30, f"{host.name}: {ready!r} from {argv}")
    return out


def start_sidecar(host: Host, config: dict, workdir: Path, opaque_ports: list[int]) -> OutputLines:
    """sidecar-init's rules, then meshcore as PROXY_UID in a directory of its own (its state)."""
    workdir.mkdir()
    os.chown(workdir, PROXY_UID, PROXY_UID)
    path = workdir / "sidecar.yaml"  # JSON is YAML; `meshcore run` reads a file by its suffix
    path.write_text(json.dumps(config, indent=2))
    host.run([*MESHCORE, "sidecar-init", *sidecar_init_args(PROXY_UID, opaque_ports=opaque_ports)])
    return start(
        host, [*MESHCORE, "run", str(path)], "meshcore: ready", user=PROXY_UID, caps=["dac_read_search"]
    )


def with_tests_on_path() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    require_netns()
    require_tool("iptables-nft", "iptables")
    require_tool("curl", "curl")
    tmp = tmp_path_factory.mktemp("sidecar-mesh")
    ca = make_ca(tmp / "ca")
    idents = {
        who: identity_files(ca, *issue(ca, f"ns/default/sa/{who}", tmp / who)) for who in ("client", "server")
    }
    for script, text in (
        ("banner.py", BANNER),
        ("grpc_server.py", GRPC_SERVER),
        ("grpc_client.py", GRPC_CLIENT),
    ):
        (tmp / script).write_text(text)
    sweep()
    with Network(latency=LATENCY) as net:
        client = net.host("client", zone="zone-a")
        server = net.host("server", zone="zone-b")
        outside = net.host("outside", zone="zone-a")
        m = Mesh(net, client, server, outside, tmp)

        # The apps: unmodified, listening on ordinary ports, as root (only the proxy's uid is exempt).
        backend = [sys.executable, "-m", "meshcore.backend"]
        start(server, [*backend, f"0.0.0.0:{HTTP1_PORT}", "--name", "server-app"], "backend server-app on")
        hypercorn = [sys.executable, "-m", "hypercorn", "--bind", f"0.0.0.0:{H2_PORT}", "asgi_backend:app"]
        start(server, hypercorn, "Running on", env=with_tests_on_path())
        start(server, [sys.executable, str(tmp / "grpc_server.py"), str(GRPC_PORT)], "ready")
        start(server, [sys.executable, str(tmp / "banner.py"), str(DB_PORT)], "ready")
        start(client, [*backend, f"0.0.0.0:{HTTP1_PORT}", "--name", "client-app"], "backend client-app on")
        for port, name in (
            (OUTSIDE_ALLOWED, "outside"),
            (OUTSIDE_DENIED, "forbidden"),
            (HTTP1_PORT, "outside-8080"),
        ):
            start(outside, [*backend, f"0.0.0.0:{port}", "--name", name], f"backend {name} on")

        services = [
            {
                "name": name,
                "addresses": [VIRTUAL[name]],
                "endpoints": [{"addr": f"{server.addr}:{TARGET[name]}", "identity": SERVER_ID}],
            }
            for name in VIRTUAL
        ]
        egress = {
            "default": "allow",
            "rules": [{"action": "deny", "networks": [f"{outside.addr}/32"], "ports": [OUTSIDE_DENIED]}],
        }
        m.sidecars["client"] = start_sidecar(
            client,
            sidecar_config(
                idents["client"],
                app_ports=[HTTP1_PORT],
                services=services,
                opaque_ports=[DB_PORT],
                egress=egress,
            ),
            tmp / "client-sidecar",
            [DB_PORT],
        )
        m.sidecars["server"] = start_sidecar(
            server,
            sidecar_config(
                idents["server"],
                app_ports=[HTTP1_PORT, H2_PORT, GRPC_PORT, DB_PORT],
                opaque_ports=[DB_PORT],
                policy={"default": "all-authenticated"},
            ),
            tmp / "server-sidecar",
            [DB_PORT],
        )
        yield m
        for host in (client, server):
            host.run([*MESHCORE, "sidecar-init", *sidecar_init_args(PROXY_UID), "--remove"])
            assert "MESHCORE" not in host.run(["iptables-save", "-t", "nat"]).stdout


def test_http1_is_mtls_between_the_sidecars_and_the_app_sees_the_caller(mesh):
    before = metric(mesh.metrics(mesh.server), "request_total", direction="inbound", tls="true")
    for url in (f"http://{VIRTUAL['web']}/headers", f"http://{mesh.server.addr}:{HTTP1_PORT}/headers"):
        r = mesh.curl("-H", "meshcore-client-id: spoofed", url)
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)
        assert seen["meshcore-client-id"] == CLIENT_ID  # verified by the server's sidecar; the spoof is gone
    server = mesh.metrics(mesh.server)
    assert metric(server, "request_total", direction="inbound", tls="true") - before == 2
    assert metric(server, "request_total", direction="inbound", tls="false") == 0
    client = mesh.metrics(mesh.client)
    assert metric(client, "request_total", direction="outbound", dst_service="web") >= 2


def test_http2_prior_knowledge_reaches_the_app_as_http2(mesh):
    r = mesh.curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://{VIRTUAL['h2']}/h2")
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    assert version == "2"
    seen = json.loads(body)
    assert seen["http_version"] == "2"  # restored towards the app after the mesh hop
    assert seen["headers"]["meshcore-client-id"] == CLIENT_ID
    # And HTTP/1.1 to the same app stays HTTP/1.1.
    seen = json.loads(mesh.curl(f"http://{mesh.server.addr}:{H2_PORT}/h1").stdout)
    assert seen["http_version"] == "1.1"
    server = mesh.metrics(mesh.server)
    assert metric(server, "request_total", dst_service=app_service_name(H2_PORT), tls="true") >= 2


def test_grpc_through_both_sidecars(mesh):
    for target in (VIRTUAL["grpc"], f"{mesh.server.addr}:{GRPC_PORT}"):
        done = mesh.client.run(
            [sys.executable, str(mesh.scripts / "grpc_client.py"), target],
            user=APP_UID,
            caps=["dac_read_search"],  # Python lives under /root
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{CLIENT_ID} hello"
    server = mesh.metrics(mesh.server)
    assert metric(server, "request_total", dst_service=app_service_name(GRPC_PORT), tls="true") >= 2


def test_server_speaks_first_over_opaque_tcp(mesh):
    server_before = mesh.metrics(mesh.server)
    for ip, port in (VIRTUAL["db"].split(":"), (mesh.server.addr, str(DB_PORT))):
        read_banner = f"exec 3<>/dev/tcp/{ip}/{port}; head -1 <&3"
        r = mesh.client.run(["bash", "-c", read_banner], user=APP_UID, check=False, timeout=20)
        assert r.stdout.strip() == "220 banner first", r
    server = mesh.metrics(mesh.server)
    # Carried as TCP over mTLS: connections counted on the inbound listener, no HTTP request.
    opened = metric(server, "tcp_open_total", listener="inbound")
    assert opened - metric(server_before, "tcp_open_total", listener="inbound") >= 2
    assert metric(server, "request_total", dst_service=app_service_name(DB_PORT)) == 0
    assert metric(mesh.metrics(mesh.client), "request_total", dst_service="db") == 0


def test_egress_outside_the_mesh_allowed_and_denied(mesh):
    before = mesh.metrics(mesh.client)
    r = mesh.curl("-D", "-", f"http://{mesh.outside.addr}:{OUTSIDE_ALLOWED}/")
    assert r.returncode == 0, r.stderr
    assert re.search(r"(?im)^x-backend: outside", r.stdout), r.stdout
    r = mesh.curl(f"http://{mesh.outside.addr}:{OUTSIDE_DENIED}/")
    assert r.returncode != 0, "denied by [egress]"
    after = mesh.metrics(mesh.client)
    for decision in ("allowed", "denied"):
        grew = metric(after, "tcp_passthrough_total", listener="outbound", decision=decision) - metric(
            before, "tcp_passthrough_total", listener="outbound", decision=decision
        )
        assert grew == 1, decision


def test_the_server_refuses_a_caller_without_a_sidecar(mesh):
    """tls = "mesh" on the inbound side: a host outside the mesh calling the app directly is
    refused, and the refusal is counted."""
    r = mesh.outside.run(
        ["curl", "-sS", "--max-time", "10", f"http://{mesh.server.addr}:{HTTP1_PORT}/"], check=False
    )
    assert r.returncode != 0, r.stdout
    wait_until(
        lambda: 'rule="tls:mesh"' in mesh.metrics(mesh.server),
        what="the plaintext refusal counted",
    )


def test_calling_an_outside_host_on_the_apps_own_port_leaves_the_host(mesh):
    r = mesh.curl("-D", "-", f"http://{mesh.outside.addr}:{HTTP1_PORT}/")
    assert re.search(r"(?im)^x-backend: outside-8080", r.stdout), r.stdout


def test_the_sidecar_config_is_a_config_meshcore_accepts_and_matches_sidecar_init():
    """No root needed: what sidecar_config writes loads as any config, and sidecar_init_args
    parses as `meshcore sidecar-init`'s flags for the same ports."""
    from meshcore.cli import build_parser
    from meshcore.config import load

    web = {"name": "web", "addresses": ["10.96.0.10:80"], "endpoints": [{"addr": "10.200.2.2:8080"}]}
    config = load(
        sidecar_config(None, tls="none", app_ports=[8080, 5432], services=[web], opaque_ports=[5432])
    )
    outbound, inbound = config.listeners
    assert (outbound.bind, outbound.transparent, outbound.direction) == ("127.0.0.1:4140", True, "outbound")
    assert (inbound.bind, inbound.transparent, inbound.direction) == ("0.0.0.0:4143", True, "inbound")
    assert inbound.opaque_ports == outbound.opaque_ports == [5432]
    app = {s.name: s for s in config.services}[app_service_name(8080)]
    assert app.addresses == ["0.0.0.0:8080"] and app.endpoints[0].addr == "127.0.0.1:8080"
    with pytest.raises(ConfigError, match=r"listeners\[1\].tls: TLS needs an \[identity\]"):
        load(sidecar_config(None, app_ports=[8080]))  # tls = "mesh" needs an identity

    args = build_parser().parse_args(["sidecar-init", *sidecar_init_args(1337, opaque_ports=[5432])])
    assert (args.proxy_uid, args.outbound_port, args.inbound_port) == (1337, 4140, 4143)
    assert args.opaque_ports == ((5432, 5432),)
