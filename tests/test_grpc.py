"""gRPC through the proxy: unary, streaming both ways, and status trailers."""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import one_service


def _unary(request: bytes, context) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    context.set_trailing_metadata((("x-served-by", "grpc-backend"),))
    return b"echo:" + request


def _bidi(requests, context):
    for msg in requests:
        yield msg.upper()


def _server_stream(request: bytes, context):
    for i in range(int(request)):
        yield b"item-%d" % i


def _client_stream(requests, context) -> bytes:
    return b"%d" % sum(len(m) for m in requests)


@pytest.fixture
def grpc_backend():
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        },
    )
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def channel(grpc_backend, proxy):
    p = proxy(one_service([grpc_backend], protocol="auto"))
    host, port = p.addresses["outbound"]
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        yield ch, p


def test_unary_with_trailing_metadata(channel):
    ch, _ = channel
    call = ch.unary_unary("/test.Echo/Unary")
    reply, info = call.with_call(b"hi", timeout=10)
    assert reply == b"echo:hi"
    assert ("x-served-by", "grpc-backend") in info.trailing_metadata()


def test_error_status_passes_through_trailers(channel):
    ch, p = channel
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"missing", timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such thing"
    # A non-zero grpc-status in the trailers is a failure, though HTTP said 200,
    # and the response is counted under its gRPC status (as Linkerd's route metrics are).
    assert 'status_code="200",grpc_status="5",classification="failure"} 1' in p.metrics()


def test_bidirectional_streaming_interleaves(channel):
    # Each message is sent only once the answer to the one before has come back
    # through the proxy: a proxy that held either direction until its stream
    # ended would stall the call.
    ch, _ = channel
    events: list[str] = []
    answers: queue.Queue[bytes] = queue.Queue()

    def lock_step():
        for i in range(20):
            events.append(f"sent {i}")
            yield b"msg-%d" % i
            try:
                answers.get(timeout=10)
            except queue.Empty:
                return  # no answer: end the stream, and the check below fails

    for reply in ch.stream_stream("/test.Echo/Bidi")(lock_step(), timeout=30):
        events.append(f"got {reply.decode()}")
        answers.put(reply)
    assert events == [e for i in range(20) for e in (f"sent {i}", f"got MSG-{i}")]


def test_server_and_client_streaming(channel):
    ch, _ = channel
    items = list(ch.unary_stream("/test.Echo/ServerStream")(b"50", timeout=10))
    assert items == [b"item-%d" % i for i in range(50)]
    total = ch.stream_unary("/test.Echo/ClientStream")(iter([b"x" * 1000] * 30), timeout=10)
    assert total == b"30000"
