"""Names a user chose reach /metrics as label values: each is escaped, so that
hostile ones (quotes, backslashes, newlines, non-ASCII) can neither break the
exposition nor forge a series, and a Prometheus parser reads back the very
names that were configured."""

from __future__ import annotations

import socket
import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import require_tool, wait_until
from h2_client import Client as H2Client
from meshcore.plugins import PluginHost, PluginSpec

HOSTILE = 'we"b\\x\nforged_total 1\nwéb'


def escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def hostile(kind: str) -> str:
    """A distinct hostile name per kind, so that a label cannot pass with another's value;
    the trailing backslash would swallow the closing quote if it went unescaped."""
    return f'{kind} "q" \\d\nforged_total 1\n ünï ✓ \\'


class Counter:
    def on_request(self, req):
        return None


class Failing:
    def on_request(self, req):
        if req.path.endswith("/boom"):
            raise RuntimeError("boom")
        return None


def lint(text: str) -> None:
    """promtool, Prometheus's own parser and linter, accepts the exposition."""
    promtool = require_tool("promtool", "prometheus")
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    allowed = "response_latency_ms metric names should not contain abbreviated units"
    assert run.returncode in (0, 3), findings
    assert [f for f in findings if f != allowed] == [], findings


def samples(text: str) -> list[tuple[str, dict[str, str]]]:
    """(sample name, labels) as the Prometheus Python client parses them."""
    return [(s.name, s.labels) for family in text_string_to_metric_families(text) for s in family.samples]


def h1_status(address: tuple[str, int], authority: str) -> int:
    """The status of a GET with this Host, sent as raw bytes (no client would send it)."""
    with socket.create_connection(address) as s:
        s.sendall(f"GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n".encode())
        return int(s.recv(100).split(b" ", 2)[1])


def h2_status(address: tuple[str, int], authority: str) -> int:
    """The status of an HTTP/2 GET with this :authority, sent unvalidated."""
    h2 = H2Client(address, validate=False)
    try:
        sid = h2.conn.get_next_available_stream_id()
        request = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/")]
        h2.conn.send_headers(sid, request, end_stream=True)
        h2.flush()
        h2.pump(lambda: sid in h2.ended or sid in h2.resets)
        return int(h2.headers[sid][":status"])
    finally:
        h2.close()


def test_hostile_names_are_escaped_in_every_family(proxy, backend):
    p = proxy(
        {
            "listeners": [{"name": HOSTILE, "bind": "127.0.0.1:0"}],
            "routes": [{"listener": HOSTILE, "name": HOSTILE, "backends": [{"service": HOSTILE}]}],
            "services": [{"name": HOSTILE, "endpoints": [{"addr": backend().addr, "zone": HOSTILE}]}],
        }
    )
    p.add_plugin(Counter(), name=HOSTILE)
    with httpx.Client() as c:
        assert c.get(p.url(HOSTILE, "/")).status_code == 200
    text = p.metrics()
    assert "\nforged_total" not in text, "a newline in a name began a line of its own"
    lint(text)
    value = escaped(HOSTILE)
    for family, label in [
        ("request_total", "dst_service"),
        ("request_total", "route"),
        ("request_total", "dst_zone"),
        ("tcp_open_total", "listener"),
        ("balancer_endpoints", "dst_service"),
        ("balancer_panic", "dst_service"),
        ("plugin_duration_seconds_count", "plugin"),
    ]:
        assert any(
            line.startswith(family + "{") and f'{label}="{value}"' in line for line in text.splitlines()
        ), (family, label)


def test_hostile_names_round_trip_through_every_family(proxy, backend):
    """Every family with a label a user names gets a series under a hostile name; parsed back,
    each label holds exactly the configured name."""
    name = {k: hostile(k) for k in ("listener", "route", "spare", "service", "zone", "rule", "plugin")}
    failing, good = backend("failing"), backend("good")
    failing.set_failing(503)
    listener = name["listener"]
    always_retry = {"on": ["5xx"], "limit": 1, "budget": 10, "min_per_second": 1000}
    never_retry = {"on": ["5xx"], "limit": 1, "budget": 0, "min_per_second": 0}
    p = proxy(
        {
            "listeners": [{"name": listener, "bind": "127.0.0.1:0", "direction": "inbound"}],
            "routes": [
                {
                    "listener": listener,
                    "name": name["spare"],
                    "path_prefix": "/ok/spare",
                    "backends": [{"service": name["service"]}],
                    "retry": never_retry,
                },
                {
                    "listener": listener,
                    "name": name["route"],
                    "backends": [{"service": name["service"]}],
                    "retry": always_retry,
                },
            ],
            "services": [
                {
                    "name": name["service"],
                    "balancer": "round-robin",
                    "endpoints": [{"addr": b.addr, "zone": name["zone"]} for b in (failing, good)],
                }
            ],
            # Only /ok is allowed, by the hostile rule; the rest falls to default:deny.
            "policy": {
                "default": "deny",
                "rules": [
                    {
                        "name": name["rule"],
                        "listener": listener,
                        "path_prefix": "/ok",
                        "networks": ["127.0.0.0/8"],
                    }
                ],
            },
        }
    )
    p.add_plugin(Failing(), name=name["plugin"], on_error="fail-open")
    with httpx.Client() as c:
        # Round robin alternates failing and good: each /ok/retry fails once and is retried,
        # and of two /ok/spare one fails first and its retry is refused by the empty budget.
        for path in ("/ok/retry", "/ok/retry", "/ok/spare", "/ok/spare", "/ok/boom", "/denied"):
            c.get(p.url(listener, path))
    host, port = p.addresses[listener]
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nnot a header\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    wait_until(lambda: "http1_malformed" in p.metrics(), what="the malformed head to be counted")

    text = p.metrics()
    lint(text)
    parsed = samples(text)
    assert not any(n.startswith("forged") for n, _ in parsed)
    expected = {
        "request_total": {"route": name["route"], "dst_service": name["service"], "dst_zone": name["zone"]},
        "response_total": {"route": name["spare"], "dst_service": name["service"], "dst_zone": name["zone"]},
        "response_latency_ms_bucket": {"route": name["route"], "dst_zone": name["zone"]},
        "response_latency_ms_count": {"route": name["spare"], "dst_service": name["service"]},
        "tcp_open_total": {"listener": listener},
        "tcp_close_total": {"listener": listener},
        "tcp_open_connections": {"listener": listener},
        "tcp_read_bytes_total": {"listener": listener},
        "tcp_write_bytes_total": {"listener": listener},
        "tcp_errors_total": {"listener": listener, "error": "http1_malformed"},
        "retry_total": {"route": name["route"], "dst_service": name["service"]},
        "retry_budget_exhausted_total": {"route": name["spare"], "dst_service": name["service"]},
        "inbound_http_authz_allow_total": {"listener": listener, "rule": name["rule"]},
        "inbound_http_authz_deny_total": {"listener": listener, "rule": "default:deny"},
        "balancer_active_tiers": {"dst_service": name["service"]},
        "balancer_load": {"dst_service": name["service"]},
        "balancer_panic": {"dst_service": name["service"]},
        "balancer_endpoints": {"dst_service": name["service"], "state": "active"},
        "plugin_errors_total": {"plugin": name["plugin"], "phase": "on_request"},
        "plugin_duration_seconds_bucket": {"plugin": name["plugin"], "le": "1e-05"},
        "plugin_duration_seconds_sum": {"plugin": name["plugin"]},
        "plugin_duration_seconds_count": {"plugin": name["plugin"], "phase": "on_request"},
    }
    for sample, labels in expected.items():
        found = [got for n, got in parsed if n == sample]
        assert any(labels.items() <= got.items() for got in found), (sample, labels, found)
    # Nothing else anywhere: every label value is a name configured here or one the core owns.
    configured = set(name.values())
    for sample, labels in parsed:
        for key in ("listener", "route", "dst_service", "dst_zone", "rule", "plugin"):
            value = labels.get(key, "")
            assert value in configured or value in ("", "default:deny"), (sample, key, value)


def test_hostile_authorities_are_refused_before_they_become_labels(proxy, backend):
    """Quotes, backslashes, newlines and non-ASCII are not valid in an authority: such requests
    are answered 400 over HTTP/1.1 and HTTP/2, and none reaches /metrics as a label. An unusual
    authority that is valid comes back from the exposition as it was sent."""
    p = proxy(
        {
            "listeners": [{"name": "outbound", "bind": "127.0.0.1:0"}],
            "routes": [{"listener": "outbound", "backends": [{"service": "web"}]}],
            "services": [{"name": "web", "endpoints": [{"addr": backend().addr}]}],
        }
    )
    address = p.addresses["outbound"]
    refused = ['we"b', "we\\b", "wéb", "a\nb", "a\\", '"']
    for authority in refused:
        assert h1_status(address, authority) == 400, authority
        assert h2_status(address, authority) == 400, authority
    odd = "x'y%22z~!$&()*+;=:8080"
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/"), headers={"host": odd}).status_code == 200
    text = p.metrics()
    lint(text)
    authorities = {labels["authority"] for _, labels in samples(text) if "authority" in labels}
    assert odd in authorities
    assert authorities <= {odd, ""}, authorities


def test_the_testing_kit_renders_plugin_families_escaped():
    """A plugin host without a proxy (meshcore.testing) renders its families through the core too."""
    name = hostile("plugin")
    host = PluginHost([PluginSpec(obj=Failing(), name=name)])
    host.start()
    try:
        req, _answer, _phases = host.on_request("r", "GET", "/boom", "web", [], "127.0.0.1:1", None, None)
        host.on_request("r", "GET", "/fine", "web", [], "127.0.0.1:1", None, None)
        text = host.render_metrics()
    finally:
        host.stop()
    lint(text)
    parsed = samples(text)
    assert ("plugin_errors_total", {"plugin": name, "phase": "on_request"}) in parsed
    counts = [labels for n, labels in parsed if n == "plugin_duration_seconds_count"]
    assert counts == [{"plugin": name, "phase": "on_request"}]
    assert text.count("plugin_duration_seconds_count{") == 1 and text.rstrip().endswith("} 2")
