"""Tap (#20): live request summaries from the admin API's /tap and `meshcore tap`, filtered and
limited, never slowing requests: a reader that falls behind loses summaries, counted."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from conftest import MESHCORE, OutputLines, metric, one_service, wait_until
from meshcore import bench
from traffic import Traffic


@pytest.fixture
def two_routes(backend, proxy):
    """Routes "api" (/api) and "rest" (everything else), both to service "web", and an admin API."""
    b = backend()
    cfg = one_service([b.addr], admin=True, route={"name": "api", "path_prefix": "/api"})
    cfg["routes"].append({"name": "rest", "listener": "outbound", "backends": [{"service": "web"}]})
    p = proxy(cfg)
    host, port = p.admin_address
    return p, f"http://{host}:{port}"


def read_lines(stream: httpx.Response, n: int) -> list[dict]:
    lines = []
    for line in stream.iter_lines():
        if line.strip():
            lines.append(json.loads(line))
        if len(lines) == n:
            break
    return lines


def test_tap_streams_the_requests_its_filters_match_up_to_its_limit(two_routes):
    p, admin = two_routes
    urls = [p.url("outbound", "/api/x?q=1"), p.url("outbound", "/other")]
    with httpx.Client(timeout=30) as client, Traffic(urls, headers={"host": "web.local"}) as traffic:
        with client.stream("GET", f"{admin}/tap", params={"route": "api", "limit": "3"}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            got = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    assert not traffic.errors and set(traffic.statuses) == {200}
    assert len(got) == 3, "the stream ends after `limit` summaries"
    for s in got:
        assert (s["route"], s["service"], s["method"], s["path"]) == ("api", "web", "GET", "/api/x?q=1")
        assert (s["status"], s["failed"], s["protocol"]) == (200, False, "HTTP/1.1")
        assert s["listener"] == "outbound"
        assert s["authority"] == "web.local" and s["zone"] == "zone-a"
        assert s["endpoint"] == p.config.services[0].endpoints[0].addr
        assert s["duration_ms"] > 0 and s["bytes"] > 0 and s["client"].startswith("127.0.0.1:")


def test_tap_as_server_sent_events_and_the_proxys_own_answers(two_routes, backend, proxy):
    p, admin = two_routes
    urls = [p.url("outbound", "/api/x")]
    with httpx.Client(timeout=30) as client:
        headers = {"accept": "text/event-stream"}
        with client.stream("GET", f"{admin}/tap?authority=web.local&limit=1", headers=headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == ": tapping", "the stream is open before any request"
            # Only web.local's requests: one for another authority, then one for web.local.
            assert client.get(urls[0], headers={"host": "other.local"}).status_code == 200
            assert client.get(urls[0], headers={"host": "web.local:80"}).status_code == 200
            events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert [e["authority"] for e in events] == ["web.local:80"]
    # A tap also sees what the proxy answers itself (no route here: 404).
    b = backend()
    bare = proxy({**one_service([b.addr], admin=True, route={"path_prefix": "/only"})})
    host, port = bare.admin_address
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"http://{host}:{port}/tap?limit=1&format=sse") as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": tapping"
            assert client.get(bare.url("outbound", "/nope")).status_code == 404
            event = next(json.loads(line[6:]) for line in lines if line.startswith("data: "))
    assert (event["status"], event["path"], event["route"], event["endpoint"]) == (404, "/nope", None, None)


def test_a_reader_that_falls_behind_loses_summaries_not_requests(two_routes):
    p, admin = two_routes
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"{admin}/tap?format=sse") as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": tapping"
            # This reader reads nothing while the proxy answers as fast as it can: the tap's queue
            # and the socket's buffers fill, and the rest is dropped.
            answered = 0
            for _ in range(30):  # bounded: each round is a second of load
                result = bench.run(p.url("outbound", "/api/x"), duration=1, connections=8)
                assert result.errors == {} and set(result.statuses) == {200}
                answered += result.requests
                if metric(p.metrics(), "tap_dropped_total") > 0:
                    break
            dropped_total = metric(p.metrics(), "tap_dropped_total")
            assert dropped_total > 0, f"nothing dropped after {answered} requests"
            dropped = None
            for line in lines:
                if line == "event: dropped":
                    dropped = json.loads(next(lines)[len("data: ") :])["dropped"]
                    break
    assert dropped is not None and 0 < dropped <= dropped_total < answered


def test_tap_refuses_bad_parameters_and_too_many_taps(two_routes):
    p, admin = two_routes
    assert httpx.get(f"{admin}/tap?limit=0").status_code == 400
    assert httpx.get(f"{admin}/tap?format=xml").status_code == 400
    r = httpx.get(f"{admin}/tap?path=/x")
    assert r.status_code == 400 and "unknown parameter 'path'" in r.text
    taps = [p.tap() for _ in range(16)]
    try:
        r = httpx.get(f"{admin}/tap")
        assert r.status_code == 503 and "16 taps" in r.text
    finally:
        for tap in taps:
            tap.close()
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"{admin}/tap?format=sse&limit=1") as stream:
            assert stream.status_code == 200, "closed taps make room"


def test_meshcore_tap_prints_one_line_per_request(two_routes):
    p, admin = two_routes
    cmd = [*MESHCORE, "tap", admin.removeprefix("http://"), "--route", "api", "--limit", "2"]
    with Traffic([p.url("outbound", "/api/x"), p.url("outbound", "/other")]) as traffic:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = OutputLines(proc.stdout)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    lines = out.text().splitlines()
    assert len(lines) == 2 and traffic.sent >= 2
    for line in lines:
        assert line.startswith("GET ") and "/api/x -> 200 " in line and "route=api" in line, line
    json_cmd = [*cmd[:-1], "1", "--json"]
    with Traffic([p.url("outbound", "/api/x")]):
        done = subprocess.run(json_cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["route"] == "api"


def test_meshcore_tap_says_when_the_admin_api_is_not_there():
    done = subprocess.run([*MESHCORE, "tap", "127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "cannot reach the admin API" in done.stderr


def test_a_tap_sees_only_what_came_after_it_opened_and_a_closed_one_reads_nothing(two_routes):
    p, _ = two_routes
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/api/before")).status_code == 200
        tap = p.tap(route="api")
        assert tap.next(0.0) == [], "nothing before the tap opened"
        assert client.get(p.url("outbound", "/api/after")).status_code == 200
        seen: list[str] = []
        wait_until(lambda: seen.extend(tap.next(0.1)) or seen, what="the request after the tap")
        assert [json.loads(s)["path"] for s in seen] == ["/api/after"]
        tap.close()
        with pytest.raises(Exception, match="closed"):
            tap.next(0.0)
