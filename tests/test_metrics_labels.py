"""Labels an operator used to Linkerd looks for: the route on request and
response metrics, the gRPC status on responses, and plaintext refused by a
mesh-only listener counted with the other denials."""

from __future__ import annotations

import socket

import httpx

from conftest import one_service, wait_until
from mesh_helpers import identity_files, inbound_config, issue, make_ca


def test_responses_carry_their_route(proxy, backend):
    cfg = one_service([backend().addr], route={"name": "api", "path_prefix": "/api"})
    p = proxy(cfg)
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/api/x")).status_code == 200
        assert c.get(p.url("outbound", "/other")).status_code == 404
    text = p.metrics()
    assert 'route="api",status_code="200",classification="success"} 1' in text
    # No route was found for the 404: its route label is empty.
    assert 'route="",status_code="404",classification="success"} 1' in text
    assert 'request_total{direction="outbound",' in text and 'route="api"} 1' in text


def test_plaintext_refused_by_a_mesh_listener_is_a_denial(proxy, backend, tmp_path):
    ca = make_ca(tmp_path / "ca")
    api = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    p = proxy(inbound_config(api, backend().addr))
    host, port = p.addresses["inbound"]
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:  # closed with our bytes unread
            answer = b""
        assert answer == b"", "closed without an answer"
    denied = 'inbound_http_authz_deny_total{listener="inbound",rule="tls:mesh"} 1'
    wait_until(lambda: denied in p.metrics(), what="the refusal counted as a denial")
