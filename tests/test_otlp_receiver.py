"""The test collector (tests/otlp_receiver.py) answers as an OTLP/HTTP collector does, and keeps what
it was sent: messages built with opentelemetry-proto's own classes, posted over real HTTP."""

from __future__ import annotations

import http.client

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otlp_receiver import OtlpReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _request(*spans: Span, service: str = "web") -> bytes:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    scope = ScopeSpans(scope=InstrumentationScope(name="meshcore", version="0.1.0"), spans=list(spans))
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])]
    ).SerializeToString()


def _span(name: str, span_id: str, parent: str = "", error: bool = False) -> Span:
    return Span(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(span_id),
        parent_span_id=bytes.fromhex(parent),
        name=name,
        kind=Span.SPAN_KIND_SERVER if not parent else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_001_500_000,
        attributes=[
            KeyValue(key="http.request.method", value=AnyValue(string_value="GET")),
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=503)),
            KeyValue(key="meshcore.retried", value=AnyValue(bool_value=True)),
        ],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def _post(
    conn: http.client.HTTPConnection,
    body: bytes,
    path: str = "/v1/traces",
    content_type: str = "application/x-protobuf",
) -> tuple[int, str, bytes]:
    conn.request("POST", path, body=body, headers={"content-type": content_type})
    r = conn.getresponse()
    return r.status, r.getheader("content-type", ""), r.read()


def test_spans_posted_come_back_as_dicts_and_the_answer_is_an_export_response() -> None:
    with OtlpReceiver() as collector:
        conn = http.client.HTTPConnection(*collector.addr.split(":"), timeout=10)
        first = _request(_span("inbound", "00f067aa0ba902b7", error=True))
        second = _request(_span("outbound", "b7ad6b7169203331", parent="00f067aa0ba902b7"), service="api")
        # Two requests on one connection: the exporter keeps its connection alive.
        for body in (first, second):
            status, content_type, answer = _post(conn, body)
            assert (status, content_type) == (200, "application/x-protobuf")
            assert ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
        conn.close()

        inbound, outbound = collector.wait_for(2)
        assert inbound == {
            "trace_id": TRACE,
            "span_id": "00f067aa0ba902b7",
            "parent_span_id": "",
            "name": "inbound",
            "kind": "server",
            "attributes": {
                "http.request.method": "GET",
                "http.response.status_code": 503,
                "meshcore.retried": True,
            },
            "status": "error",
            "status_message": "",
            "service": "web",
            "scope": "meshcore",
            "start_time_unix_nano": 1_700_000_000_000_000_000,
            "end_time_unix_nano": 1_700_000_000_001_500_000,
        }
        assert (outbound["parent_span_id"], outbound["kind"]) == ("00f067aa0ba902b7", "client")
        assert (outbound["status"], outbound["service"]) == ("unset", "api")
        assert (collector.posts, collector.refused, collector.errors) == (2, 0, [])


def test_a_refusing_collector_answers_its_status_and_keeps_nothing() -> None:
    with OtlpReceiver(status=500) as collector:
        conn = http.client.HTTPConnection(*collector.addr.split(":"), timeout=10)
        status, _, _ = _post(conn, _request(_span("lost", "00f067aa0ba902b7")))
        assert status == 500
        collector.wait_for_posts(1)
        assert (collector.spans(), collector.refused) == ([], 1)

        collector.status = 200
        status, _, _ = _post(conn, _request(_span("kept", "00f067aa0ba902b7")))
        assert status == 200
        assert [s["name"] for s in collector.wait_for(1)] == ["kept"]
        conn.close()


@pytest.mark.parametrize(
    ("path", "content_type", "body", "status"),
    [
        ("/v1/metrics", "application/x-protobuf", b"", 404),
        ("/v1/traces", "application/json", b"{}", 415),
        ("/v1/traces", "application/x-protobuf", b"\xff\xff\xff", 400),
    ],
)
def test_what_is_not_an_otlp_trace_export_is_answered_as_such(
    path: str, content_type: str, body: bytes, status: int
) -> None:
    with OtlpReceiver() as collector:
        conn = http.client.HTTPConnection(*collector.addr.split(":"), timeout=10)
        assert _post(conn, body, path, content_type)[0] == status
        conn.close()
        assert collector.spans() == []


def test_waiting_for_spans_that_never_come_says_what_came() -> None:
    with OtlpReceiver() as collector:
        conn = http.client.HTTPConnection(*collector.addr.split(":"), timeout=10)
        _post(conn, _request(_span("only", "00f067aa0ba902b7")))
        conn.close()
        with pytest.raises(AssertionError, match=r"1 of 2 spans .*\['only'\]"):
            collector.wait_for(2, timeout=0.2)
