"""A real OTLP/HTTP trace collector on 127.0.0.1 for tests: it accepts `POST /v1/traces` with a
protobuf `ExportTraceServiceRequest`, decodes it with opentelemetry-proto's own classes, keeps the
spans as plain dicts and answers an `ExportTraceServiceResponse`, as a collector does. HTTP/1.1 with
keep-alive, so an exporter that reuses its connection is served as by a real collector."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"


class OtlpReceiver:
    """`with OtlpReceiver() as collector:` then point the exporter at `collector.addr`.

    `status` (settable at any time) is what a POST is answered with: 200 keeps its spans; anything
    else refuses them (counted in `refused`). `spans()` gives what was kept, each as
    `{"trace_id", "span_id", "parent_span_id" (hex, "" for a root), "name", "kind" ("server",
    "client", ...), "attributes" ({key: str|int|bool|float}), "status" ("unset"|"ok"|"error"),
    "status_message", "service" (the resource's service.name), "scope", "start_time_unix_nano",
    "end_time_unix_nano"}`."""

    def __init__(self, *, status: int = 200) -> None:
        self.status = status
        self.posts = 0
        self.refused = 0
        self.errors: list[str] = []
        self._spans: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> OtlpReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def addr(self) -> str:
        """ "127.0.0.1:PORT", as an OTLP exporter's collector address."""
        assert self._server is not None, "use OtlpReceiver as a context manager"
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def spans(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The spans once at least `n` have arrived; AssertionError naming what did if not in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._spans) >= n, timeout):
                names = [s["name"] for s in self._spans]
                raise AssertionError(
                    f"OTLP receiver: {len(self._spans)} of {n} spans after {timeout} s "
                    f"({self.posts} posts, {self.refused} refused, errors {self.errors}): {names}"
                )
            return list(self._spans)

    def wait_for_posts(self, n: int, timeout: float = 10.0) -> None:
        """Waits until `n` export requests arrived, kept or refused (for a collector answering 500)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.posts >= n, timeout):
                raise AssertionError(f"OTLP receiver: {self.posts} of {n} posts after {timeout} s")

    def _received(self, request: Optional[ExportTraceServiceRequest], error: Optional[str]) -> int:
        """Records one POST; the status to answer it with."""
        with self._changed:
            self.posts += 1
            status = self.status
            if error is not None:
                self.errors.append(error)
                status = 400
            elif status != 200:
                self.refused += 1
            else:
                assert request is not None
                self._spans.extend(_span_dicts(request))
            self._changed.notify_all()
            return status


def _handler_for(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect of a collector

        def do_POST(self) -> None:
            body = self._body()
            if self.path != PATH:
                return self._answer(404, b"not found", "text/plain")
            if self.headers.get("content-type", "").split(";")[0].strip() != PROTOBUF:
                return self._answer(415, b"content-type must be application/x-protobuf", "text/plain")
            try:
                request, error = ExportTraceServiceRequest.FromString(body), None
            except DecodeError as e:
                request, error = None, f"undecodable ExportTraceServiceRequest: {e}"
            status = receiver._received(request, error)
            if status == 200:
                return self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)
            self._answer(status, (error or "refused").encode(), "text/plain")

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("content-length", 0)))

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test output is for the test's own lines

    return Handler


def _span_dicts(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": _enum_name(Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
                        "attributes": _attributes(span.attributes),
                        "status": _enum_name(Status.StatusCode.Name(span.status.code), "STATUS_CODE_"),
                        "status_message": span.status.message,
                        "service": resource.get("service.name", ""),
                        "scope": scope_spans.scope.name,
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                    }
                )
    return spans


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)
