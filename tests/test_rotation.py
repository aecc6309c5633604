"""Certificate rotation under load: from the identity service and from files on disk."""

from __future__ import annotations

import ssl
import threading
from datetime import timedelta

import httpx

from conftest import wait_until
from mesh_helpers import API, addr, identity_files, inbound_config, issue, make_ca, outbound_config
from meshcore import identity


def wait_for_log(capfd, text: str, timeout: float, what: str) -> None:
    """Waits until the proxy's stderr (captured by `capfd`) has said `text`."""
    seen: list[str] = []

    def logged() -> bool:
        seen.append(capfd.readouterr().err)
        return text in "".join(seen)

    wait_until(logged, timeout, what)


def test_rotation_from_the_identity_service_under_load(tmp_path, backend, proxy):
    ca = make_ca(tmp_path / "ca")
    tokens = {"tok-web": "ns/default/sa/web", "tok-api": "ns/default/sa/api"}
    # A 15 s lifetime renews at 70 % (10.5 s), just above Linkerd's 10 s floor.
    with identity.IdentityService(ca, tokens=tokens, ttl=timedelta(seconds=15)) as svc:

        def ident(token: str, name: str) -> dict:
            path = tmp_path / f"{token}.txt"
            path.write_text(token)
            return {
                "trust_anchors": str(ca / "trust-anchor.pem"),
                "issuer": svc.url,
                "token_file": str(path),
                "name": name,
            }

        inbound = proxy(inbound_config(ident("tok-api", "ns/default/sa/api"), backend("app").addr))
        outbound = proxy(outbound_config(ident("tok-web", "ns/default/sa/web"), addr(inbound, "inbound")))
        first_in, first_out = inbound.identity(), outbound.identity()
        assert first_in["spiffe_id"] == API

        failures: list[object] = []
        done = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def load():
            with httpx.Client(timeout=5) as c:
                while not stop.is_set():
                    try:
                        r = c.get(outbound.url("outbound"))
                        if r.status_code != 200:
                            failures.append(r.status_code)
                    except httpx.HTTPError as e:
                        failures.append(repr(e))
                    with lock:
                        done[0] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(
                lambda: (
                    inbound.identity()["not_after"] != first_in["not_after"]
                    and outbound.identity()["not_after"] != first_out["not_after"]
                ),
                30,
                "both proxies to renew their certificates",
            )
            # Keep the load on across the switch: 100 more requests on the new certificates.
            at_switch = done[0]
            wait_until(lambda: done[0] >= at_switch + 100, what="100 requests after the switch")
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert failures == []
        assert inbound.identity()["not_after"] > first_in["not_after"]
        assert outbound.identity()["not_after"] > first_out["not_after"]
        assert "identity_cert_refresh_total 2" in inbound.metrics()
        # A new handshake is served with the new certificate.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca / "trust-anchor.pem")
        web_crt, web_key = issue(ca, "ns/default/sa/web", tmp_path / "probe")
        ctx.load_cert_chain(web_crt, web_key)
        import socket

        with socket.create_connection(inbound.addresses["inbound"]) as raw, ctx.wrap_socket(raw) as s:
            served = identity.cert_info(ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True)))
        assert int(served["not_after"].timestamp()) == inbound.identity()["not_after"]


def test_certificate_files_are_reloaded_when_they_change(tmp_path, backend, proxy, capfd):
    ca = make_ca(tmp_path / "ca")
    crt, key = issue(ca, "ns/default/sa/api", tmp_path / "api", ttl=timedelta(hours=1))
    inbound = proxy(inbound_config(identity_files(ca, crt, key), backend("app").addr))
    before = inbound.identity()["not_after"]
    issue(ca, "ns/default/sa/api", tmp_path / "api", ttl=timedelta(hours=2))
    wait_until(lambda: inbound.identity()["not_after"] > before, what="the new files to be loaded")
    # A broken replacement is refused and the current certificate stays.
    current = inbound.identity()["not_after"]
    crt.write_text("not a certificate")
    wait_for_log(capfd, "new certificate files rejected", 10, "the broken files to be tried and refused")
    assert inbound.identity()["not_after"] == current


def test_failed_renewal_keeps_serving_with_the_current_certificate(tmp_path, backend, proxy, capfd):
    ca = make_ca(tmp_path / "ca")
    token = tmp_path / "api.token"
    token.write_text("tok-api")
    svc = identity.IdentityService(ca, tokens={"tok-api": "ns/default/sa/api"}, ttl=timedelta(seconds=15))
    inbound = proxy(
        inbound_config(
            {
                "trust_anchors": str(ca / "trust-anchor.pem"),
                "issuer": svc.url,
                "token_file": str(token),
                "name": "ns/default/sa/api",
            },
            backend("app").addr,
        )
    )
    first = inbound.identity()["not_after"]
    svc.close()  # the identity service goes away before the renewal at 10.5 s
    web = identity_files(ca, *issue(ca, "ns/default/sa/web", tmp_path / "web"))
    outbound = proxy(outbound_config(web, addr(inbound, "inbound")))
    wait_for_log(capfd, "renewal failed", 30, "the renewal at 10.5 s to be tried and fail")
    with httpx.Client() as c:
        assert [c.get(outbound.url("outbound")).status_code for _ in range(10)] == [200] * 10
    assert inbound.identity()["not_after"] == first
