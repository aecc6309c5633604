"""The app gets the protocol its client spoke, whatever the mesh hop used.

Between proxies requests travel in HTTP/2; the outbound proxy writes the
client's protocol in `meshcore-orig-proto` and the inbound proxy speaks it to
the app. `auto` towards an app without h2c speaks HTTP/1.1, and remembers.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from asgi_backend import AsgiBackend
from conftest import one_service
from mesh_helpers import addr, identity_files, inbound_config, issue, make_ca, outbound_config


class Http1OnlyApp:
    """An HTTP/1.1-only server (Python's http.server) that records the
    request line of everything it is sent, HTTP/2 prefaces included."""

    def __init__(self) -> None:
        lines: list[str] = []
        self.lines = lines

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def parse_request(self) -> bool:
                lines.append(self.raw_requestline.decode("latin-1").strip())
                return super().parse_request()

            def do_GET(self) -> None:
                body = f"{self.request_version} {self.headers.get('meshcore-orig-proto')}".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def prefaces(self) -> int:
        return sum(1 for line in self.lines if line.startswith("PRI * HTTP/2.0"))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def h1_app():
    app = Http1OnlyApp()
    yield app
    app.stop()


@pytest.fixture
def asgi():
    app = AsgiBackend()
    yield app
    app.stop()


@pytest.fixture
def certs(tmp_path):
    ca = make_ca(tmp_path / "ca")
    return {
        who: identity_files(ca, *issue(ca, f"ns/default/sa/{who}", tmp_path / who)) for who in ("web", "api")
    }


def mesh_to(proxy, certs, app_addr: str):
    """client -> outbound -> mTLS (HTTP/2) -> inbound (service protocol `auto`) -> app."""
    inbound = proxy(inbound_config(certs["api"], app_addr, service_protocol="auto"))
    outbound = proxy(outbound_config(certs["web"], addr(inbound, "inbound")))
    return outbound


def test_http1_client_reaches_an_http1_only_app_across_the_mesh(proxy, certs, h1_app):
    outbound = mesh_to(proxy, certs, h1_app.addr)
    with httpx.Client() as c:
        answers = [c.get(outbound.url("outbound", f"/{i}")) for i in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    # The app was spoken to in HTTP/1.1 and never saw the carrier header.
    assert {r.text for r in answers} == {"HTTP/1.1 None"}
    assert h1_app.prefaces() == 0, "the inbound proxy restored HTTP/1.1 without trying h2c"


def test_an_h2c_capable_app_gets_the_clients_protocol_across_the_mesh(proxy, certs, asgi):
    outbound = mesh_to(proxy, certs, asgi.addr)
    with httpx.Client() as c:
        h1 = c.get(outbound.url("outbound", "/h1")).json()
    with httpx.Client(http1=False, http2=True) as c:
        h2 = c.get(outbound.url("outbound", "/h2")).json()
    assert h1["http_version"] == "1.1"
    assert h2["http_version"] == "2"
    assert "meshcore-orig-proto" not in h1["headers"] and "meshcore-orig-proto" not in h2["headers"]


def test_h2c_client_to_an_http1_only_app_falls_back_once_and_remembers(proxy, h1_app):
    p = proxy(one_service([h1_app.addr], protocol="auto"))
    with httpx.Client(http1=False, http2=True) as c:
        answers = [c.get(p.url("outbound", f"/{i}")) for i in range(4)]
    assert [(r.status_code, r.http_version) for r in answers] == [(200, "HTTP/2")] * 4
    assert {r.text for r in answers} == {"HTTP/1.1 None"}
    assert h1_app.prefaces() == 1, h1_app.lines


def test_h2c_client_across_the_mesh_to_an_http1_only_app(proxy, certs, h1_app):
    outbound = mesh_to(proxy, certs, h1_app.addr)
    with httpx.Client(http1=False, http2=True) as c:
        answers = [c.get(outbound.url("outbound", f"/{i}")) for i in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    assert h1_app.prefaces() == 1


def test_http2_asked_explicitly_of_an_http1_app_is_a_clear_502(proxy, h1_app):
    p = proxy(one_service([h1_app.addr], protocol="http2"))
    with httpx.Client() as c:
        r = c.get(p.url("outbound", "/"))
    assert r.status_code == 502
    assert "does not speak HTTP/2" in r.text


def test_only_a_peer_proxy_may_say_what_the_client_spoke(proxy, asgi):
    # A plaintext h2c client claiming HTTP/1.1 is spoken to in its own
    # protocol, and the claim is not passed on.
    p = proxy(one_service([asgi.addr], protocol="auto"))
    with httpx.Client(http1=False, http2=True) as c:
        seen = c.get(p.url("outbound", "/"), headers={"meshcore-orig-proto": "HTTP/1.1"}).json()
    assert seen["http_version"] == "2"
    assert "meshcore-orig-proto" not in seen["headers"]
    with httpx.Client() as c:
        seen = c.get(p.url("outbound", "/"), headers={"meshcore-orig-proto": "HTTP/2"}).json()
    assert seen["http_version"] == "1.1"
    assert "meshcore-orig-proto" not in seen["headers"]
