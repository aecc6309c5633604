"""The admin API's HTTP surface: answers, methods, who may change things, request bodies."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Optional

import httpx
import pytest

from conftest import one_service
from meshcore.admin.guards import MAX_BODY_BYTES

LOOPBACK_ONLY = "admin changes are accepted from loopback only\n"


@pytest.fixture
def admin(backend, proxy):
    p = proxy(one_service([backend().addr], admin=True))
    host, port = p.admin_address
    return p, f"http://{host}:{port}"


def test_json_answers_are_indented_with_a_final_newline(admin):
    _p, url = admin
    for path in ("/config", "/endpoints", "/plugins"):
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.text == json.dumps(r.json(), indent=2) + "\n"
    assert httpx.get(f"{url}/plugins").json() == {"plugins": []}
    r = httpx.post(f"{url}/plugins/reload")
    assert (r.status_code, r.text) == (200, '{\n  "reloaded": true,\n  "errors": {}\n}\n')


def test_head_answers_as_get_without_a_body(admin):
    _p, url = admin
    with httpx.Client() as client:
        for path in ("/live", "/ready", "/metrics", "/config", "/endpoints", "/plugins", "/nowhere"):
            get, head = client.get(f"{url}{path}"), client.head(f"{url}{path}")
            assert head.status_code == get.status_code, path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.content == b"", path
    assert get.status_code == 404


def test_unknown_paths_are_404_and_the_query_string_is_ignored(admin):
    _p, url = admin
    for method, path in [("GET", "/nowhere"), ("GET", "/live/"), ("POST", "/nowhere"), ("GET", "/plugins/x")]:
        r = httpx.request(method, f"{url}{path}")
        assert (r.status_code, r.text) == (404, "not found\n"), (method, path)
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert httpx.get(f"{url}/ready?verbose=1").text == "ready\n"


def test_a_wrong_method_on_a_known_path_is_405_with_allow(admin):
    _p, url = admin
    for method, path, allow in [
        ("POST", "/live", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/plugins", "GET, HEAD"),
        ("GET", "/shutdown", "POST"),
        ("GET", "/plugins/reload", "POST"),
        ("HEAD", "/shutdown", "POST"),
    ]:
        r = httpx.request(method, f"{url}{path}")
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == allow, (method, path)
    assert httpx.post(f"{url}/live").text == "method not allowed\n"


def test_a_declared_body_over_the_cap_is_refused_unread(admin):
    p, url = admin
    r = httpx.post(f"{url}/plugins/reload", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413 and r.headers["connection"] == "close"
    # Only the head is sent: the answer does not wait for a body that never comes.
    with socket.create_connection(p.admin_address) as s:
        s.sendall(b"POST /shutdown HTTP/1.1\r\nhost: admin\r\ncontent-length: 1000000000\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 413 ")
    assert p.running


def read_until_closed(s: socket.socket) -> bytes:
    s.settimeout(10)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


def test_a_chunked_body_over_the_cap_is_refused(admin):
    p, url = admin

    def chunks():
        for _ in range(4):
            yield b"x" * (MAX_BODY_BYTES // 2)

    assert httpx.post(f"{url}/shutdown", content=chunks()).status_code == 413
    assert p.running


def test_a_small_body_is_tolerated(admin):
    _p, url = admin
    assert httpx.post(f"{url}/plugins/reload", json={}).json() == {"reloaded": True, "errors": {}}
    small = (b"x" * (MAX_BODY_BYTES // 2) for _ in range(2))
    assert httpx.post(f"{url}/plugins/reload", content=small).status_code == 200


def non_loopback_address() -> Optional[str]:
    """This host's address on its default route, if it has one: connecting a UDP socket
    picks the source address without sending anything."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ipaddress.ip_address(addr).is_loopback else addr


def test_changes_from_another_host_are_forbidden_reads_are_not(backend, proxy):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this host has no address other than loopback")
    cfg = one_service([backend().addr])
    cfg["admin"] = "0.0.0.0:0"
    p = proxy(cfg)
    url = f"http://{addr}:{p.admin_address[1]}"
    for path in ("/shutdown", "/plugins/reload", "/nowhere"):
        r = httpx.post(f"{url}{path}")
        assert (r.status_code, r.text) == (403, LOOPBACK_ONLY), path
    assert httpx.put(f"{url}/plugins").status_code == 403
    assert httpx.get(f"{url}/ready").text == "ready\n"
    assert p.running
    # The same requests from loopback are taken.
    assert httpx.post(f"http://127.0.0.1:{p.admin_address[1]}/shutdown").status_code == 202
    assert p.wait(5)
