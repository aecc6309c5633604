"""Defect 5: a client cannot flood the logs. Repeated lines are rate-limited
per call site with a count of what was suppressed; metrics count every event."""

from __future__ import annotations

import re
import socket

from h2.errors import ErrorCodes

from conftest import one_service, wait_until
from h2_client import Client


def test_malformed_http2_requests_write_a_few_lines_not_one_each(backend, proxy, capfd):
    p = proxy(one_service([backend().addr], listener_protocol="http2"))
    c = Client(p.addresses["outbound"], validate=False)
    sids = []
    for _ in range(300):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(
            sid,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "web"),
                (":path", "/"),
                ("connection", "x"),
            ],
            end_stream=True,
        )
        sids.append(sid)
        if len(sids) % 50 == 0:
            c.flush()
            c.pump(lambda: all(s in c.resets for s in sids))  # noqa: B023
    assert all(c.resets[s] == ErrorCodes.PROTOCOL_ERROR for s in sids)
    c.close()
    lines = [line for line in capfd.readouterr().err.splitlines() if "malformed HTTP/2 request" in line]
    # Other tests in this process may have used up the burst already: at most 5.
    assert len(lines) <= 5, lines


def test_malformed_http1_connections_are_counted_and_logged_a_few_times(backend, proxy, capfd):
    p = proxy(one_service([backend().addr], listener_protocol="http1"))
    for _ in range(100):
        with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
    lines = [line for line in capfd.readouterr().err.splitlines() if "connection error" in line]
    # Other tests in this process may have used up the burst already: at most 5.
    assert len(lines) <= 5, lines
    # Counted as each connection ends, just after its 400 is written.
    wait_until(lambda: malformed(p) >= 100, 10, "100 malformed connections to be counted")
    assert malformed(p) == 100


def malformed(p) -> float:
    m = re.search(r'error="http1_malformed"} (\S+)', p.metrics())
    return float(m.group(1)) if m else 0.0
