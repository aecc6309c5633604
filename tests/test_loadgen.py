"""The load generator measures correctly: latency, rate, coordinated omission, protocols."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asgi_backend import AsgiBackend
from conftest import one_service, wait_until
from meshcore import bench

# How close the numbers come to the truth on a quiet machine (overhead over the
# server's delay, rate accuracy) is measured by bench/loadgen_accuracy.py; these
# tests check what holds however busy the machine is.


def test_fixed_delay_and_rate_are_measured(backend):
    b = backend()
    b.set_delay(0.020)
    r = bench.run(f"http://{b.addr}/", rate=200, duration=3, connections=8)
    assert r.errors == {} and r.statuses == {200: r.requests}
    # Every planned request (200/s for 3 s) was sent, reached the server and was counted once.
    assert r.requests == 600 == b.requests
    # The rate is what was measured: the last answer came after the 3 s of sending.
    assert r.seconds >= 3 and r.rps == pytest.approx(r.requests / r.seconds) and r.rps <= 200
    # No request can take less than the server's 20 ms.
    assert r.latency_ms["max"] >= r.latency_ms["p99.9"] >= r.p99 >= r.p50 >= 20, r.latency_ms


def test_open_loop_charges_the_wait_a_slow_server_causes(backend):
    b = backend()
    b.set_delay(0.020)
    # One connection, 100/s asked of a server taking at least 20 ms each: request k is
    # due at 10k ms but cannot be answered before 20(k+1) ms, so, timed from when it was
    # due (coordinated omission corrected), it took at least 10k + 20 ms. A generator
    # timing from when it really sent would report about 20 ms for each.
    corrected = bench.run(f"http://{b.addr}/", rate=100, duration=2, connections=1)
    n = corrected.requests
    assert n == 200 and corrected.errors == {}
    # At least half the requests (k >= n/2) took 10 n/2 + 20 ms or more.
    assert corrected.p50 >= 10 * (n // 2), corrected.latency_ms
    assert corrected.latency_ms["max"] >= 10 * (n - 1) + 20, corrected.latency_ms


def test_http2(proxy):
    asgi = AsgiBackend()
    try:
        r = bench.run(f"http://{asgi.addr}/x", rate=80, duration=1, connections=2, http2=True, streams=4)
        # Every planned request: 8 lanes (2 connections x 4 streams), each sending every 100 ms.
        assert r.errors == {} and r.statuses == {200: 80}
    finally:
        asgi.stop()


def test_max_mode_through_the_proxy(backend, proxy):
    b = backend()
    p = proxy(one_service([b.addr]))
    r = bench.run(p.url("outbound"), duration=1, connections=4)
    assert r.errors == {} and r.statuses == {200: r.requests} and r.requests > 0
    assert b.requests == r.requests  # each counted request went through the proxy, once
    assert r.target_rps is None


def test_tls(tmp_path, backend, proxy):
    from mesh_helpers import identity_files, inbound_config, issue, make_ca

    ca = make_ca(tmp_path / "ca")
    ident = identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api"))
    p = proxy(inbound_config(ident, backend().addr, tls="permissive"))
    host, port = p.addresses["inbound"]
    r = bench.run(f"https://{host}:{port}/", rate=50, duration=1, connections=2)
    assert r.errors == {} and r.statuses == {200: 50}


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
    assert data["target_rps"] == 50 and data["statuses"] == {"200": 50} and data["requests"] == 50
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}


def test_bad_arguments():
    with pytest.raises(ValueError):
        bench.run("http://127.0.0.1:1/", rate=0)
    with pytest.raises(ValueError, match="invalid URL"):
        bench.run("http://[not a url/", duration=0.1)


def test_a_run_stopped_early_ends_and_reports_what_it_did(backend):
    from meshcore import bench

    b = backend("web")
    load = bench.start(f"http://{b.addr}/", duration=120, connections=2)
    wait_until(lambda: load.progress()[1] >= 20, what="20 requests answered")
    load.stop()
    result = load.wait()
    assert result.requests >= 20 and result.errors == {}
    assert result.seconds < 120, "stop() ended the run before its duration"
