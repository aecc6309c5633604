"""Names a user chose reach /metrics as label values: each is escaped, so that
hostile ones (quotes, backslashes, newlines, non-ASCII) can neither break the
exposition nor forge a series."""

from __future__ import annotations

import subprocess

import httpx

from conftest import require_tool

HOSTILE = 'we"b\\x\nforged_total 1\nwéb'


def escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def on_request(self, req):
        return None


def test_hostile_names_are_escaped_in_every_family(proxy, backend):
    promtool = require_tool("promtool", "prometheus")
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
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    allowed = "response_latency_ms metric names should not contain abbreviated units"
    assert lint.returncode in (0, 3), findings
    assert [f for f in findings if f != allowed] == [], findings
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
