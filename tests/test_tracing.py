"""Distributed tracing (#20): W3C trace context (and B3) through two proxies, each adding its span,
and spans exported over OTLP/HTTP to a real collector (opentelemetry-proto decodes them)."""

from __future__ import annotations

import re

import httpx

from conftest import metric, one_service, wait_until
from otlp_receiver import OtlpReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def chain(backend, proxy, tracing):
    """client -> A (outbound) -> B (inbound) -> backend, both proxies with `tracing`."""
    b = backend()
    inbound = one_service([b.addr], admin=True)
    inbound["listeners"][0].update(name="inbound", direction="inbound")
    inbound["routes"][0]["listener"] = "inbound"
    inbound["tracing"] = {**tracing, "service_name": "server-side"}
    server = proxy(inbound)
    host, port = server.addresses["inbound"]
    outbound = one_service([f"{host}:{port}"], admin=True)
    outbound["tracing"] = {**tracing, "service_name": "client-side"}
    return proxy(outbound), server


def traceparent(headers: dict[str, str]) -> tuple[str, str, str]:
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])", headers["traceparent"])
    assert match, headers
    return match.group(1), match.group(2), match.group(3)


def test_a_trace_starts_at_the_first_proxy_and_each_proxy_adds_its_span(backend, proxy):
    with OtlpReceiver() as collector:
        client_side, server_side = chain(backend, proxy, {"otlp": collector.addr})
        seen = httpx.get(client_side.url("outbound", "/headers")).json()
        trace_id, parent, flags = traceparent(seen)
        assert flags == "01"
        spans = {s["service"]: s for s in collector.wait_for(2)}
    first, second = spans["client-side"], spans["server-side"]
    assert first["trace_id"] == second["trace_id"] == trace_id
    assert first["parent_span_id"] == "", "the first proxy started the trace"
    assert second["parent_span_id"] == first["span_id"]
    assert parent == second["span_id"], "the app's parent is the last proxy's span"
    assert (first["kind"], second["kind"]) == ("client", "server")
    assert first["name"] == "GET route-0"
    attributes = second["attributes"]
    assert (attributes["http.request.method"], attributes["url.path"]) == ("GET", "/headers")
    assert attributes["http.response.status_code"] == 200 and attributes["meshcore.service"] == "web"
    assert first["status"] == "unset" and first["end_time_unix_nano"] > first["start_time_unix_nano"]


def test_a_callers_trace_is_joined_and_its_tracestate_kept(backend, proxy):
    with OtlpReceiver() as collector:
        client_side, _ = chain(backend, proxy, {"otlp": collector.addr, "sampling": 0.0})
        headers = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=opaque,other=1"}
        seen = httpx.get(client_side.url("outbound", "/headers"), headers=headers).json()
        spans = {s["service"]: s for s in collector.wait_for(2)}
    assert traceparent(seen)[0] == TRACE and seen["tracestate"] == "vendor=opaque,other=1"
    assert spans["client-side"]["parent_span_id"] == PARENT
    assert spans["server-side"]["parent_span_id"] == spans["client-side"]["span_id"]


def test_an_unsampled_trace_is_carried_but_not_exported(backend, proxy):
    with OtlpReceiver() as collector:
        client_side, _ = chain(backend, proxy, {"otlp": collector.addr})
        unsampled = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
        seen = httpx.get(client_side.url("outbound", "/headers"), headers=unsampled).json()
        assert traceparent(seen)[0] == TRACE and traceparent(seen)[2] == "00"
        # Spans leave in order: once the next (sampled) request's arrive, the first's would have.
        sampled = {"traceparent": f"00-{'1' * 32}-{PARENT}-01"}
        httpx.get(client_side.url("outbound", "/headers"), headers=sampled)
        spans = collector.wait_for(2)
    assert {s["trace_id"] for s in spans} == {"1" * 32}


def test_b3_comes_back_as_b3_with_the_proxys_span(backend, proxy):
    with OtlpReceiver() as collector:
        client_side, _ = chain(backend, proxy, {"otlp": collector.addr})
        b3 = {"b3": f"{TRACE}-{PARENT}-1"}
        seen = httpx.get(client_side.url("outbound", "/headers"), headers=b3).json()
        spans = {s["service"]: s for s in collector.wait_for(2)}
    trace_id, span_id, sampled, *parent = seen["b3"].split("-")
    assert (trace_id, sampled, parent) == (TRACE, "1", [spans["client-side"]["span_id"]])
    assert span_id == spans["server-side"]["span_id"]
    assert traceparent(seen)[:2] == (TRACE, span_id), "and W3C alongside"


def test_without_sampling_no_trace_is_started_and_without_tracing_nothing_is_touched(backend, proxy):
    client_side, _ = chain(backend, proxy, {"sampling": 0.0})
    assert "traceparent" not in httpx.get(client_side.url("outbound", "/headers")).json()
    b = backend()
    plain = proxy(one_service([b.addr]))
    odd = {"traceparent": "not-a-trace", "tracestate": "x=1"}
    seen = httpx.get(plain.url("outbound", "/headers"), headers=odd).json()
    assert (seen["traceparent"], seen["tracestate"]) == ("not-a-trace", "x=1")


def test_a_collector_that_refuses_costs_spans_not_requests(backend, proxy):
    with OtlpReceiver(status=500) as collector:
        client_side, _ = chain(backend, proxy, {"otlp": collector.addr})
        with httpx.Client() as c:
            for _ in range(5):
                assert c.get(client_side.url("outbound", "/headers")).status_code == 200
        wait_until(
            lambda: metric(client_side.metrics(), "trace_spans_dropped_total") >= 5,
            what="the refused spans counted",
        )
    assert metric(client_side.metrics(), "trace_spans_exported_total") == 0
