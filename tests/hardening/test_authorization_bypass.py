"""Defect 1: what policy checks is exactly what the app receives. Paths with
dot-segments, escaped dots and escaped slashes must not reach /admin through
an allow rule for /public, over HTTP/1.1 or HTTP/2."""

from __future__ import annotations

import pytest

from h2_client import Client
from hardening_tools import Recorder, exchange, guarded_config, status_of


@pytest.fixture
def guarded(proxy):
    upstream = Recorder()
    p = proxy(guarded_config(upstream.addr))
    yield p, upstream
    upstream.close()


def get(addr, target: str) -> int:
    raw = f"GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode()
    return status_of(exchange(addr, raw))


@pytest.mark.parametrize(
    "target",
    [
        "/public/../admin/secret.txt",
        "/public/%2e%2e/admin/secret.txt",
        "/public/%2E%2e/admin/secret.txt",
        "/public/./../admin/secret.txt",
        "//public/../admin/secret.txt",
    ],
)
def test_dot_segments_are_resolved_before_policy_over_http1(guarded, target):
    p, upstream = guarded
    assert get(p.addresses["inbound"], target) == 403
    assert not any("admin" in path for path in upstream.paths()), upstream.paths()


@pytest.mark.parametrize(
    "target",
    [
        "/public/..%2fadmin/secret.txt",
        "/public/..%2Fadmin/secret.txt",
        "/public/..%5cadmin/x",
        "/public/..;/admin/secret.txt",
        "/public/%00/x",
    ],
)
def test_ambiguous_escapes_are_refused(guarded, target):
    p, upstream = guarded
    assert get(p.addresses["inbound"], target) == 400
    assert upstream.paths() == []


def test_the_app_gets_the_path_policy_checked(guarded):
    p, upstream = guarded
    assert get(p.addresses["inbound"], "/public/a/../b/%7Euser//x?q=%2e%2e") == 200
    assert get(p.addresses["inbound"], "/admin/../public/ok") == 200
    assert upstream.paths() == ["/public/b/~user/x?q=%2e%2e", "/public/ok"]


@pytest.mark.parametrize("path", ["/public/../admin/secret.txt", "/public/%2e%2e/admin/secret.txt"])
def test_dot_segments_are_resolved_before_policy_over_http2(proxy, path):
    upstream = Recorder()
    try:
        p = proxy(guarded_config(upstream.addr, protocol="http2"))
        c = Client(p.addresses["inbound"], validate=False)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "http"), (":authority", "app"), (":path", path)],
            end_stream=True,
        )
        c.flush()
        c.pump(lambda: sid in c.ended)
        assert c.headers[sid][":status"] == "403"
        allowed = c.request("/public/x/../y")
        c.pump(lambda: allowed in c.ended)
        assert c.headers[allowed][":status"] == "200"
        assert upstream.paths() == ["/public/y"]
        c.close()
    finally:
        upstream.close()
