"""Trust-anchor rotation without downtime: `meshcore identity rotate-anchor` walks an outbound and
an inbound proxy from one anchor to another under constant load, checking each step against their
admin APIs; and each anchor's expiry is a metric, warned about 30 days ahead."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import timedelta

import httpx
import pytest
from cryptography import x509

from conftest import MESHCORE, wait_until
from mesh_helpers import addr, inbound_config, issue, make_ca, outbound_config
from meshcore import identity
from meshcore.identity.rotation import fingerprint


def sha256_of(path) -> list[str]:
    return [fingerprint(c) for c in x509.load_pem_x509_certificates(path.read_bytes())]


class Load:
    """Four clients calling through the outbound proxy until stopped; every failure is kept."""

    def __init__(self, url: str):
        self.url = url
        self.failures: list[object] = []
        self.done = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    answer = client.get(self.url)
                    if answer.status_code != 200:
                        self.failures.append(answer.status_code)
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                self.done += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_the_anchor_is_rotated_under_load_without_a_failed_request(tmp_path, backend, proxy):
    ca = make_ca(tmp_path / "ca")
    before = shutil.copytree(ca, tmp_path / "ca-before")  # the old issuer, to try it at the end
    old = sha256_of(ca / "trust-anchor.pem")
    bundles = {side: tmp_path / f"{side}-anchors.pem" for side in ("in", "out")}
    for path in bundles.values():
        shutil.copy(ca / "trust-anchor.pem", path)
    tokens = {"tok-web": "ns/default/sa/web", "tok-api": "ns/default/sa/api"}
    # A 15 s lifetime renews at 70 % (10.5 s), just above the 10 s floor: `roll` takes that long.
    with identity.IdentityService(ca, tokens=tokens, ttl=timedelta(seconds=15)) as svc:

        def ident(side: str, token: str, name: str) -> dict:
            path = tmp_path / f"{token}.txt"
            path.write_text(token)
            return {
                "trust_anchors": str(bundles[side]),
                "issuer": svc.url,
                "token_file": str(path),
                "name": name,
            }

        inbound = proxy(
            inbound_config(ident("in", "tok-api", "ns/default/sa/api"), backend("app").addr, admin=True)
        )
        out_config = outbound_config(ident("out", "tok-web", "ns/default/sa/web"), addr(inbound, "inbound"))
        outbound = proxy({**out_config, "admin": "127.0.0.1:0"})
        admins = [f"http://{p.admin_address[0]}:{p.admin_address[1]}" for p in (inbound, outbound)]
        for p in (inbound, outbound):
            assert (
                p.identity()["chains_to"] == old
                and [a["sha256"] for a in p.identity()["trust_anchors"]] == old
            )

        def rotate(step: str) -> subprocess.CompletedProcess:
            flags = [f"--bundle={b}" for b in bundles.values()] + [f"--proxy={a}" for a in admins]
            return subprocess.run(
                [*MESHCORE, "identity", "rotate-anchor", str(ca), step, *flags, "--wait", "60s"],
                capture_output=True,
                text=True,
                timeout=90,
            )

        with Load(outbound.url("outbound")) as load:
            wait_until(lambda: load.done >= 50, what="load through the mesh")
            refused = rotate("issuer")
            assert refused.returncode == 1 and "no rotation under way" in refused.stderr, refused

            added = rotate("add")
            assert added.returncode == 0, added.stderr
            new = (sha256_of(ca / "next-trust-anchor.pem"))[0]
            assert f"every listed proxy (2) trusts anchor {new[:16]}" in added.stdout
            for path in [ca / "trust-anchor.pem", *bundles.values()]:
                assert sha256_of(path) == [*old, new]
            # Nothing is signed under the new anchor yet: the old one cannot go.
            early = rotate("remove")
            assert early.returncode == 1, early
            assert "refused: live certificates still chain to an old anchor" in early.stderr

            assert rotate("issuer").returncode == 0
            rolled = rotate("roll")
            assert rolled.returncode == 0, rolled.stderr
            assert f"every listed proxy (2) holds a certificate under anchor {new[:16]}" in rolled.stdout
            removed = rotate("remove")
            assert removed.returncode == 0, removed.stderr
            assert f"every listed proxy (2) trusts anchor {new[:16]} and no old one" in removed.stdout

            at_end = load.done
            wait_until(lambda: load.done >= at_end + 100, what="100 requests on the new anchor alone")
        assert load.failures == []

        for p in (inbound, outbound):
            now = p.identity()
            assert now["chains_to"] == [new]
            assert [a["sha256"] for a in now["trust_anchors"]] == [new]
        for path in [ca / "trust-anchor.pem", *bundles.values()]:
            assert sha256_of(path) == [new]
        assert (ca / f"retired-{old[0]}.pem").exists() and not (ca / "next-trust-anchor.pem").exists()
        metrics = inbound.metrics()
        assert f'sha256="{new}"' in metrics and f'sha256="{old[0]}"' not in metrics

        # A new handshake with a certificate under the new anchor is served; one under the old
        # anchor is refused by the proxy as signed by an unknown CA.
        def call_inbound(crt, key) -> bytes:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.load_cert_chain(crt, key)
            with socket.create_connection(inbound.addresses["inbound"]) as raw:
                with context.wrap_socket(raw) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
                    return tls.recv(100)

        fresh = issue(ca, "ns/default/sa/web", tmp_path / "fresh")
        assert call_inbound(*fresh).startswith(b"HTTP/1.1 200")
        stale = issue(before, "ns/default/sa/web", tmp_path / "stale")
        with pytest.raises(ssl.SSLError, match="unknown ca|bad certificate|certificate unknown"):
            call_inbound(*stale)


def test_an_anchor_expiring_within_30_days_is_warned_about_and_each_expiry_is_a_metric(
    tmp_path, backend, proxy, capfd
):
    ca = tmp_path / "ca"
    identity.init_ca(ca, ttl=timedelta(days=20))
    crt, key = issue(ca, "ns/default/sa/api", tmp_path / "api")
    ident = {"trust_anchors": str(ca / "trust-anchor.pem"), "cert": str(crt), "key": str(key)}
    p = proxy(inbound_config(ident, backend("app").addr))
    err = capfd.readouterr().err
    assert re.search(
        r"WARNING: trust anchor CN=root\.mesh\.local \(sha256 [0-9a-f]{16}\.\.\.\) expires in 19 days", err
    ), err
    [anchor] = p.identity()["trust_anchors"]
    not_after = int(
        x509.load_pem_x509_certificate((ca / "trust-anchor.pem").read_bytes()).not_valid_after_utc.timestamp()
    )
    assert anchor["not_after"] == not_after
    line = (
        f'identity_trust_anchor_expiration_timestamp_seconds{{subject="CN=root.mesh.local",'
        f'sha256="{anchor["sha256"]}"}} {not_after}'
    )
    assert line in p.metrics().splitlines()


def test_a_bad_bundle_is_refused_and_the_current_anchors_kept(tmp_path, backend, proxy, capfd):
    """Garbage, and a well-formed bundle of another CA that the proxy's own certificate does not
    chain to (with it every peer would refuse this proxy), are both refused."""
    ca = make_ca(tmp_path / "ca")
    other = make_ca(tmp_path / "other")
    bundle = tmp_path / "anchors.pem"
    shutil.copy(ca / "trust-anchor.pem", bundle)
    crt, key = issue(ca, "ns/default/sa/api", tmp_path / "api")
    ident = {"trust_anchors": str(bundle), "cert": str(crt), "key": str(key)}
    p = proxy(inbound_config(ident, backend("app").addr))
    before = p.identity()["trust_anchors"]
    seen: list[str] = []

    def logged(text: str) -> bool:
        seen.append(capfd.readouterr().err)
        return text in "".join(seen)

    bundle.write_text("not a certificate\n")
    wait_until(lambda: logged("rejected, keeping the current anchors"), what="garbage to be refused")
    shutil.copy(other / "trust-anchor.pem", bundle)
    wait_until(
        lambda: logged("own certificate chains to none of these anchors"), what="a foreign CA to be refused"
    )
    assert p.identity()["trust_anchors"] == before
