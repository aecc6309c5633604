"""Clusters linked (#18): two clusters on loopback, each a control plane with its own documents
and backends, sharing one trust anchor; east links west. Flat mode imports west's endpoints as
they are; gateway mode sends east's requests to west's `meshcore gateway`, over mTLS, which
forwards them into west keeping the caller's identity. A local service wins over an imported one
of the same name; imported services outlive the remote control plane."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from control_helpers import MESHCORE, ControlPlane, service_toml, write

from conftest import wait_until
from mesh_helpers import identity_files, make_ca
from meshcore import ConfigError, identity
from meshcore.cli import build_parser
from meshcore.config import load
from meshcore.control.client import Subscription
from meshcore.control.sources import endpoint
from meshcore.control.sources.link import Link, LinkSource, parse_link
from meshcore.gateway import ServiceByHost, gateway_config

GATEWAY_ID = "spiffe://mesh.local/ns/west/sa/gateway"
EAST_CLIENT_ID = "spiffe://mesh.local/ns/east/sa/client"


class GatewayProcess:
    """`meshcore gateway` as a process; its log kept for the tests to wait on."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            [*MESHCORE, "gateway", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        assert self.proc.stdout is not None
        serving = self.proc.stdout.readline()
        match = re.match(r"meshcore-gateway: serving on (\S+)", serving)
        assert match, f"no serving line: {serving!r}, log: {self.log}"
        self.addr = match.group(1)
        assert "meshcore-gateway: ready" in self.proc.stdout.readline()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def logged(self, *parts: str) -> bool:
        return any(all(p in line for p in parts) for line in list(self.log))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture
def processes():
    started: list = []

    def keep(process):
        started.append(process)
        return process

    yield keep
    for process in reversed(started):
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


def docs_dir(path: Path, **services: str) -> Path:
    path.mkdir()
    for name, text in services.items():
        write(path / f"{name}.toml", text)
    return path


def east_proxy(control: str, **extra) -> dict:
    """A proxy in east (zone east-a, cluster east): `api` by host, everything else to `web`, both
    discovered."""
    return {
        "zone": "east-a",
        "cluster": "east",
        "discovery": {"control": control},
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0"}],
        "routes": [
            {"listener": "outbound", "host": "api", "backends": [{"service": "api"}]},
            {"listener": "outbound", "backends": [{"service": "web"}]},
        ],
        "services": [{"name": "web", "balancer": "zonal"}, {"name": "api", "balancer": "zonal"}],
        **extra,
    }


def get(p, path: str = "/", host: str = "web") -> httpx.Response:
    return httpx.get(p.url("outbound", path), headers={"host": host}, timeout=10)


def endpoints_of(p, service: str) -> list[dict]:
    return next(s["endpoints"] for s in p.endpoints()["services"] if s["name"] == service)


def test_flat_link_imports_the_remote_services_as_the_costliest_tier(tmp_path, processes, proxy, backend):
    east_web, west_web, west_api = backend("east-web", "east-a"), backend("west-web"), backend("west-api")
    west = processes(
        ControlPlane(
            docs_dir(
                tmp_path / "west",
                web=service_toml("web", west_web.addr, zone="west-a"),
                api=service_toml("api", west_api.addr, zone="west-a"),
            )
        )
    )
    east_docs = docs_dir(tmp_path / "east", web=service_toml("web", east_web.addr, zone="east-a"))
    east = processes(ControlPlane(east_docs, tls=["--link", f"west=http://{west.addr}"]))
    p = proxy(east_proxy(f"http://{east.addr}"))

    # `web` is in both: east's endpoint, then west's added as the costliest tier; light traffic
    # stays in east.
    wait_until(lambda: len(endpoints_of(p, "web")) == 2, what="west's web endpoint added")
    tiers = {e["addr"]: (e["cluster"], e["tier"]) for e in endpoints_of(p, "web")}
    assert tiers == {east_web.addr: (None, 0), west_web.addr: ("west", 2)}
    assert {get(p).headers["x-backend"] for _ in range(5)} == {"east-web"}
    # `api` is only in west: imported as it is there, its cluster the link's name, the costliest tier.
    assert get(p, host="api").headers["x-backend"] == "west-api"
    [api] = endpoints_of(p, "api")
    assert (api["addr"], api["zone"], api["cluster"], api["tier"]) == (west_api.addr, "west-a", "west", 2)

    # East's `web` goes: west's serves alone.
    (east_docs / "web.toml").unlink()
    wait_until(lambda: get(p).headers.get("x-backend") == "west-web", 15, "west's web to be served")
    [web] = endpoints_of(p, "web")
    assert (web["addr"], web["cluster"], web["tier"]) == (west_web.addr, "west", 2)
    # East's back: traffic comes home.
    write(east_docs / "web.toml", service_toml("web", east_web.addr, zone="east-a"))
    wait_until(lambda: get(p).headers.get("x-backend") == "east-web", 15, "east's web back")
    assert {get(p).headers["x-backend"] for _ in range(5)} == {"east-web"}

    # A change in west reaches east's proxies through the link.
    moved = backend("west-api-2")
    write(tmp_path / "west" / "api.toml", service_toml("api", moved.addr, zone="west-b"))
    wait_until(lambda: get(p, host="api").headers.get("x-backend") == "west-api-2", 15, "west's change")


def test_imported_services_outlive_the_remote_control_plane(tmp_path, processes, backend):
    west_api = backend("west-api")
    west_docs = docs_dir(tmp_path / "west", api=service_toml("api", west_api.addr))
    west = processes(ControlPlane(west_docs))
    east = processes(ControlPlane(docs_dir(tmp_path / "east"), tls=["--link", f"west=http://{west.addr}"]))
    west.kill()
    wait_until(lambda: east.logged(f"control plane http://{west.addr}", "keeping the last known state"))

    # A proxy that subscribes only now still gets `api`: the control plane kept it, not just a cache.
    subscription = Subscription(f"http://{east.addr}", ["api"], lambda changed: None).start()
    try:
        assert subscription.wait_synced(10)
        api = subscription.state()["api"]
        assert api["exists"] and [(e["addr"], e["cluster"]) for e in api["endpoints"]] == [
            (west_api.addr, "west")
        ]
    finally:
        subscription.stop()

    # West comes back on its port (a restart: a new epoch) without `api`: east withdraws it.
    (west_docs / "api.toml").unlink()
    host, port = west.addr.rsplit(":", 1)
    processes(ControlPlane(west_docs, bind=f"{host}:{port}"))
    subscription = Subscription(f"http://{east.addr}", ["api"], lambda changed: None).start()
    try:
        wait_until(lambda: not subscription.state().get("api", {"exists": True})["exists"], 30, "api gone")
    finally:
        subscription.stop()


@pytest.fixture
def mesh_ca(tmp_path):
    """One trust anchor for both clusters, and the certificates each part presents."""
    ca = make_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    identity.issue(ca, "control-west", out_prefix=str(certs / "west-control"), hosts=["127.0.0.1"])
    identity.issue(ca, "ns/east/sa/control", out_prefix=str(certs / "east-link"))
    identity.issue(ca, "ns/west/sa/gateway", out_prefix=str(certs / "gateway"))
    identity.issue(ca, "ns/east/sa/client", out_prefix=str(certs / "east-client"))
    return ca, certs


def files(certs: Path, name: str) -> list[str]:
    return [str(certs / f"{name}.crt"), str(certs / f"{name}.key")]


def test_gateway_mode_reaches_west_through_its_gateway_over_mtls(
    tmp_path, mesh_ca, processes, proxy, backend
):
    ca, certs = mesh_ca
    anchors = str(ca / "trust-anchor.pem")
    west_web = backend("west-web", "west-a")
    west_docs = docs_dir(tmp_path / "west", web=service_toml("web", west_web.addr, zone="west-a"))
    cert, key = files(certs, "west-control")
    west = processes(
        ControlPlane(west_docs, tls=["--tls-cert", cert, "--tls-key", key, "--trust-anchors", anchors])
    )
    cert, key = files(certs, "gateway")
    gateway = processes(
        GatewayProcess(
            ["--bind", "127.0.0.1:0", "--control", f"https://{west.addr}", "--cert", cert, "--key", key]
            + ["--trust-anchors", anchors, "--cluster", "west", "--zone", "west-a"]
        )
    )
    cert, key = files(certs, "east-link")
    link = f"west=https://{west.addr},gateway={gateway.addr},gateway-identity={GATEWAY_ID}"
    east = processes(
        ControlPlane(
            docs_dir(tmp_path / "east"),
            tls=["--link", link, "--link-cert", cert, "--link-key", key, "--link-trust-anchors", anchors],
        )
    )
    wait_until(lambda: west.logged("identity spiffe://mesh.local/ns/east/sa/control"), what="the link ID")
    ident = identity_files(ca, certs / "east-client.crt", certs / "east-client.key")
    p = proxy(east_proxy(f"http://{east.addr}", identity=ident))

    # East's `web` is west's gateway, mTLS to its SPIFFE ID, in the costliest tier.
    [web] = endpoints_of(p, "web")
    assert (web["addr"], web["cluster"], web["tier"]) == (gateway.addr, "west", 2)
    r = get(p, "/headers")
    assert (r.status_code, r.headers["x-backend"]) == (200, "west-web")
    # The backend behind the gateway sees who called from east, not the gateway.
    assert json.loads(r.text)["meshcore-client-id"] == EAST_CLIENT_ID

    # The gateway routes by authority: NAME:PORT and NAME.anything too; a name it lacks is 404.
    assert get(p, host="web:8080").headers["x-backend"] == "west-web"
    assert get(p, host="web.west.svc.cluster.local:80").headers["x-backend"] == "west-web"
    assert get(p, host="nothing.example").status_code == 404

    # A service that appears in west is routed by the gateway and imported by east.
    west_api = backend("west-api", "west-a")
    write(west_docs / "api.toml", service_toml("api", west_api.addr, zone="west-a"))
    wait_until(lambda: gateway.logged("routing api"), 15, "the gateway to route api")
    wait_until(lambda: get(p, host="api").status_code == 200, 15, "east to import api")
    assert get(p, host="api").headers["x-backend"] == "west-api"
    # And one that goes is no longer routed.
    (west_docs / "api.toml").unlink()
    wait_until(lambda: gateway.logged("no longer routing api"), 15, "the gateway to drop api")
    assert get(p, "/", host="api.west").status_code in (404, 503)


def test_the_gateway_refuses_callers_without_a_mesh_certificate(tmp_path, mesh_ca, processes, backend):
    ca, certs = mesh_ca
    west_web = backend("west-web")
    west = processes(ControlPlane(docs_dir(tmp_path / "west", web=service_toml("web", west_web.addr))))
    cert, key = files(certs, "gateway")
    gateway = processes(
        GatewayProcess(
            ["--bind", "127.0.0.1:0", "--control", f"http://{west.addr}", "--cert", cert, "--key", key]
            + ["--trust-anchors", str(ca / "trust-anchor.pem")]
        )
    )
    with pytest.raises(httpx.HTTPError):  # TLS without a client certificate: refused in the handshake
        httpx.get(f"https://{gateway.addr}/", headers={"host": "web"}, verify=False, timeout=5).read()
    with pytest.raises(httpx.HTTPError):  # plaintext on the mTLS port
        httpx.get(f"http://{gateway.addr}/", headers={"host": "web"}, timeout=5)
    # A caller with a mesh certificate gets through.
    ctx = ssl.create_default_context(cafile=str(ca / "trust-anchor.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(certs / "east-client.crt", certs / "east-client.key")
    r = httpx.get(f"https://{gateway.addr}/headers", headers={"host": "web"}, verify=ctx, timeout=10)
    assert r.headers["x-backend"] == "west-web"
    assert json.loads(r.text)["meshcore-client-id"] == EAST_CLIENT_ID


def test_an_inbound_proxy_behind_the_gateway_sees_and_checks_the_original_caller(
    tmp_path, mesh_ca, proxy, backend
):
    ca, certs = mesh_ca
    identity.issue(ca, "ns/west/sa/web", out_prefix=str(certs / "west-web"))
    west_web = backend("west-web")
    inbound = proxy(
        {
            "identity": identity_files(ca, certs / "west-web.crt", certs / "west-web.key"),
            "listeners": [
                {
                    "name": "inbound",
                    "bind": "127.0.0.1:0",
                    "tls": "mesh",
                    "direction": "inbound",
                    "trusted_gateways": [GATEWAY_ID],
                }
            ],
            "routes": [{"listener": "inbound", "backends": [{"service": "app"}]}],
            "services": [{"name": "app", "endpoints": [{"addr": west_web.addr}]}],
            # Only east's client may call: policy checks the caller behind the gateway.
            "policy": {"default": "deny", "rules": [{"listener": "inbound", "identities": [EAST_CLIENT_ID]}]},
        }
    )
    host, port = inbound.addresses["inbound"]
    services = {"web": [{"addr": f"{host}:{port}", "identity": "spiffe://mesh.local/ns/west/sa/web"}]}
    gateway_ident = identity_files(ca, certs / "gateway.crt", certs / "gateway.key")
    gw = proxy(gateway_config("127.0.0.1:0", gateway_ident, services))

    def client(name: str) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(ca / "trust-anchor.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(certs / f"{name}.crt", certs / f"{name}.key")
        return httpx.Client(verify=ctx, timeout=10)

    gw_host, gw_port = gw.addresses["gateway"]
    with client("east-client") as east:
        r = east.get(f"https://{gw_host}:{gw_port}/headers", headers={"host": "web"})
        assert r.status_code == 200, r.text
        assert json.loads(r.text)["meshcore-client-id"] == EAST_CLIENT_ID
        # Called directly, a peer that is no gateway cannot name someone else: its own ID replaces it.
        forged = {"meshcore-client-id": "spiffe://mesh.local/ns/ops/sa/admin"}
        r = east.get(f"https://{host}:{port}/headers", headers=forged)
        assert json.loads(r.text)["meshcore-client-id"] == EAST_CLIENT_ID
    with client("gateway") as gateway:
        inbound_url = f"https://{host}:{port}/headers"
        # The gateway calling for itself is the gateway, whom policy does not allow.
        assert gateway.get(inbound_url).status_code == 403
        # A gateway may not vouch for a caller of a trust domain this proxy does not accept.
        outsider = {"meshcore-client-id": "spiffe://other.example/ns/x/sa/y"}
        assert gateway.get(inbound_url, headers=outsider).status_code == 403
        assert gateway.get(inbound_url, headers={"meshcore-client-id": "not-an-id"}).status_code == 403


def test_trusted_gateways_are_checked(tmp_path):
    listener = {"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"}
    with pytest.raises(ConfigError, match="needs tls"):
        load({"listeners": [{**listener, "trusted_gateways": [GATEWAY_ID]}]})
    with pytest.raises(ConfigError, match="not a SPIFFE ID"):
        load({"listeners": [{**listener, "tls": "mesh", "trusted_gateways": ["gateway"]}]})


def test_a_link_imports_only_the_remotes_own_endpoints():
    def resource(*endpoints: dict, exists: bool = True) -> dict:
        return {"type": "service", "name": "web", "version": 1, "exists": exists, "endpoints": [*endpoints]}

    own = endpoint("10.0.0.1:80", zone="w-a")
    labelled = {**own, "addr": "10.0.0.2:80", "cluster": "west"}
    foreign = {**own, "addr": "10.0.0.3:80", "cluster": "east"}
    flat = LinkSource(Link("west", "http://127.0.0.1:1"))
    assert [(e["addr"], e["cluster"]) for e in flat.imported(resource(own, labelled, foreign))] == [
        ("10.0.0.1:80", "west"),
        ("10.0.0.2:80", "west"),
    ]
    assert flat.imported(resource(foreign)) is None, "only the remote's imports: not imported (no loop)"
    assert flat.imported(resource()) == [], "no endpoints now is imported as such"
    assert flat.imported(resource(own, exists=False)) is None
    via = LinkSource(Link("west", "http://127.0.0.1:1", "127.0.0.1:4143", GATEWAY_ID))
    [gw] = via.imported(resource(own, labelled))
    assert (gw["addr"], gw["identity"], gw["cluster"]) == ("127.0.0.1:4143", GATEWAY_ID, "west")
    assert via.imported(resource()) == []


def test_the_gateway_finds_the_service_a_host_names():
    router = ServiceByHost()
    router.services = frozenset({"web", "web.v2", "api"})
    assert router.service_for("web") == "web"
    assert router.service_for("WEB:8080") == "web"
    assert router.service_for("web.default.svc.cluster.local") == "web"
    assert router.service_for("web.v2.default") == "web.v2", "the longest service name wins"
    assert router.service_for("other.web") is None
    assert router.service_for("") is None
    link = parse_link("west=https://h:1,gateway=[::1]:4143,gateway-identity=spiffe://d/gw")
    assert (link.gateway, link.gateway_identity) == ("[::1]:4143", "spiffe://d/gw")


def run_cli(*argv: str) -> None:
    args = build_parser().parse_args(list(argv))
    args.func(args)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--link", "west"], "--link 'west': expected NAME=URL"),
        (["--link", "West=http://127.0.0.1:1"], "link name 'West'"),
        (["--link", "west=ftp://127.0.0.1:1"], "--link 'west=ftp://127.0.0.1:1': 'ftp://127.0.0.1:1' is not"),
        (["--link", "west=http://127.0.0.1"], "is not the remote control plane's https://HOST:PORT"),
        (["--link", "west=http://127.0.0.1:1,colour=red"], "unknown option 'colour'"),
        (["--link", "west=http://127.0.0.1:1,gateway=127.0.0.1:4143"], "gateway and gateway-identity go"),
        (["--link", "w=http://127.0.0.1:1,gateway=nope,gateway-identity=spiffe://d/g"], "expected HOST:PORT"),
        (["--link", "west=http://127.0.0.1:1,gateway=h:1,gateway-identity=gw"], "gateway-identity 'gw'"),
        (["--link", "west=http://10.0.0.1:1"], "plain http:// is accepted for loopback hosts only"),
        (["--link", "w=https://127.0.0.1:1"], "--link w: https://127.0.0.1:1 is https: give --link-cert"),
        (["--link", "w=http://127.0.0.1:1", "--link", "w=http://127.0.0.1:2"], "--link w: linked twice"),
        (["--link", "w=http://127.0.0.1:1", "--link-cert", "c"], "--link-cert given alone"),
        (["--link-cert", "c", "--link-key", "k", "--link-trust-anchors", "t"], "given without --link"),
        (
            ["--link", "w=https://127.0.0.1:1", "--link-cert", "/nope/c", "--link-key", "k"]
            + ["--link-trust-anchors", "t"],
            "--link-cert /nope/c: no such file",
        ),
    ],
)
def test_link_flag_errors_name_the_flag(tmp_path, argv, message):
    with pytest.raises(ConfigError) as e:
        run_cli("control", "serve", "--dir", str(tmp_path), *argv)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cert", "/nope.crt"], "--cert /nope.crt: no such file"),
        (["--bind", "nowhere"], "--bind:"),
        (["--control", "ftp://127.0.0.1:1"], "--control:"),
        (["--control", "https://127.0.0.1:1"], None),  # https is fine with the identity files
        (["--trust-domain", "Bad Domain"], "--trust-domain:"),
        (["--admin", "nowhere"], "--admin:"),
    ],
)
def test_gateway_flag_errors_name_the_flag(mesh_ca, argv, message):
    ca, certs = mesh_ca
    cert, key = files(certs, "gateway")
    flags = {"--bind": "127.0.0.1:0", "--control": "http://127.0.0.1:1", "--cert": cert, "--key": key}
    flags["--trust-anchors"] = str(ca / "trust-anchor.pem")
    extra = []
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in flags:
            flags[flag] = value
        else:
            extra += [flag, value]
    args = build_parser().parse_args(["gateway", *(x for kv in flags.items() for x in kv), *extra])
    from meshcore.gateway import Gateway

    make = lambda: Gateway(  # noqa: E731 - the constructor checks every flag and binds nothing
        args.bind,
        args.control,
        Path(args.cert),
        Path(args.key),
        Path(args.trust_anchors),
        trust_domains=tuple(args.trust_domain),
        admin=args.admin,
    )
    if message is None:
        make()
        return
    with pytest.raises(ConfigError) as e:
        make()
    assert message in str(e.value)
