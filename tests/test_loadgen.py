"""The load generator measures correctly: latency, rate, coordinated omission, protocols."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asgi_backend import AsgiBackend
from conftest import one_service
from meshcore import bench


def test_fixed_delay_and_rate_are_measured(backend):
    b = backend()
    b.set_delay(0.020)
    r = bench.run(f"http://{b.addr}/", rate=200, duration=3, connections=8)
    assert r.errors == {} and r.statuses == {200: r.requests}
    assert abs(r.rps - 200) / 200 <= 0.02, r.rps
    # 20 ms of sleep plus the Python backend's own overhead.
    assert 19.5 <= r.p50 <= 25, r.latency_ms
    assert r.latency_ms["max"] >= r.latency_ms["p99.9"] >= r.p99 >= r.p50


def test_open_loop_charges_the_wait_a_slow_server_causes(backend):
    b = backend()
    b.set_delay(0.020)
    # One connection can do ~45 req/s at 20 ms each; asking for 100/s builds a queue. A closed
    # loop would report ~20 ms; corrected for coordinated omission, the tail shows the queue.
    corrected = bench.run(f"http://{b.addr}/", rate=100, duration=2, connections=1)
    closed = bench.run(f"http://{b.addr}/", duration=1, connections=1)
    assert closed.p99 < 30
    assert corrected.p99 > 500, corrected.latency_ms


def test_http2(proxy):
    asgi = AsgiBackend()
    try:
        r = bench.run(f"http://{asgi.addr}/x", rate=100, duration=1, connections=2, http2=True, streams=4)
        assert r.statuses == {200: r.requests} and r.requests >= 95
    finally:
        asgi.stop()


def test_max_mode_through_the_proxy(backend, proxy):
    p = proxy(one_service([backend().addr]))
    r = bench.run(p.url("outbound"), duration=1, connections=4)
    assert r.requests > 100 and r.errors == {}
    assert r.target_rps is None


def test_tls(tmp_path, backend, proxy):
    from mesh_helpers import identity_files, inbound_config, issue, make_ca

    ca = make_ca(tmp_path / "ca")
    ident = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    p = proxy(inbound_config(ident, backend().addr, tls="permissive"))
    host, port = p.addresses["inbound"]
    r = bench.run(f"https://{host}:{port}/", rate=50, duration=1, connections=2)
    assert r.statuses == {200: r.requests} and r.requests >= 48


def test_cli_json_output(backend):
    b = backend()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshcore.cli",
            "bench",
            f"http://{b.addr}/",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--connections",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["target_rps"] == 50 and data["statuses"] == {"200": data["requests"]}
    assert set(data["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}


def test_bad_arguments():
    with pytest.raises(ValueError):
        bench.run("http://127.0.0.1:1/", rate=0)
    with pytest.raises(ValueError, match="invalid URL"):
        bench.run("http://[not a url/", duration=0.1)
