"""meshcore.serving, which the admin API and the identity service run on: the addresses it binds,
closing it (also from one of its own requests), and the process state it must leave alone."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import one_service, refuses_connections, wait_until_read_by_peer
from meshcore import BindError
from meshcore.identity import IdentityService, init_ca
from meshcore.serving import BackgroundServer, ServerLimits


def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


def served(routes: list[Route], host: str = "127.0.0.1", **limits: float) -> BackgroundServer:
    return BackgroundServer(
        Starlette(routes=routes), host, 0, name="test service", limits=ServerLimits(**limits)
    )


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")


# --- addresses --------------------------------------------------------------------------------------


def test_port_0_is_resolved_to_the_bound_port():
    with served([Route("/", hello)]) as server:
        host, port = server.address
        assert (host, port != 0) == ("127.0.0.1", True)
        assert httpx.get(f"{url(host, port)}/").text == "hello\n"


@needs_ipv6
def test_an_ipv6_address_is_served():
    with served([Route("/", hello)], "::1") as server:
        host, port = server.address
        assert host == "::1"
        assert httpx.get(f"{url(host, port)}/").text == "hello\n"


@needs_ipv6
def test_the_ipv6_wildcard_takes_ipv4_callers_too():
    with served([Route("/", hello)], "::") as server:
        port = server.address[1]
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello\n"
        assert httpx.get(f"http://[::1]:{port}/").text == "hello\n"


@needs_ipv6
def test_a_port_in_use_is_a_bind_error_naming_the_service():
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as taken:
        port = taken.getsockname()[1]
        refusal = rf"^test service cannot bind \[::1\]:{port}: Address already in use$"
        with pytest.raises(BindError, match=refusal):
            BackgroundServer(Starlette(), "::1", port, name="test service", limits=ServerLimits())


# --- closing ----------------------------------------------------------------------------------------


def started_with_its_thread(
    routes: list[Route], **limits: float
) -> tuple[BackgroundServer, threading.Thread]:
    before = set(threading.enumerate())
    server = served(routes, **limits)
    (thread,) = set(threading.enumerate()) - before
    return server, thread


def test_close_is_prompt_joins_and_cuts_off_clients():
    server, thread = started_with_its_thread(
        [Route("/", hello)], keep_alive=60, head_timeout=60, shutdown_grace=0.2
    )
    assert thread.name == "meshcore-test-service"
    addr = server.address
    idle, begun = socket.create_connection(addr, timeout=10), socket.create_connection(addr, timeout=10)
    try:
        idle.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello\n"):
            answer += idle.recv(4096) or pytest.fail(f"closed before the answer's end: {answer!r}")
        begun.sendall(b"GET / HTTP/1.1\r\n")  # idle is kept alive, begun may finish, for a minute
        wait_until_read_by_peer(begun)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 10  # without waiting on the clients' deadlines
        assert not thread.is_alive()
        assert refuses_connections(addr)
        assert idle.recv(1) == b""
        assert begun.recv(1) == b""
    finally:
        idle.close()
        begun.close()
        server.close()  # a second close() is harmless


@pytest.mark.parametrize("handler_kind", ["sync", "async"])
def test_close_from_one_of_its_own_requests_answers_it_and_ends(handler_kind: str):
    # Starlette runs a sync handler on a worker thread and an async one on the server's loop.
    box: list[BackgroundServer] = []

    def close_sync(request: Request) -> PlainTextResponse:
        box[0].close()
        return PlainTextResponse("closing\n")

    async def close_async(request: Request) -> PlainTextResponse:
        box[0].close()
        return PlainTextResponse("closing\n")

    server, thread = started_with_its_thread(
        [Route("/close", close_sync if handler_kind == "sync" else close_async, methods=["POST"])]
    )
    box.append(server)
    try:
        assert httpx.post(f"{url(*server.address)}/close", timeout=10).text == "closing\n"
        thread.join(10)
        assert not thread.is_alive()
        assert refuses_connections(server.address)
    finally:
        server.close()


# --- process state ----------------------------------------------------------------------------------


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logger_state() -> dict[str, tuple[list[logging.Handler], int, bool, bool]]:
    loggers = {name: logging.getLogger(name) for name in UVICORN_LOGGERS}
    return {name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for name, lg in loggers.items()}


@pytest.fixture
def configured_uvicorn_loggers() -> Iterator[dict[str, Recorder]]:
    """The uvicorn loggers as a host program might set them up: a handler each and a level."""
    saved = logger_state()
    recorders = {name: Recorder() for name in UVICORN_LOGGERS}
    for name, level in zip(UVICORN_LOGGERS, (logging.WARNING, logging.INFO, logging.INFO)):
        logger = logging.getLogger(name)
        logger.addHandler(recorders[name])
        logger.setLevel(level)
    try:
        yield recorders
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def test_the_servers_leave_the_uvicorn_loggers_as_they_were_and_log_no_access(
    configured_uvicorn_loggers: dict[str, Recorder], backend, proxy, tmp_path: Path
):
    before = logger_state()
    p = proxy(one_service([backend().addr], admin=True))
    host, port = p.admin_address
    assert httpx.get(f"http://{host}:{port}/ready").text == "ready\n"
    init_ca(tmp_path / "ca")
    with IdentityService(tmp_path / "ca", tokens={"tok": "ns/default/sa/web"}) as identity:
        trusted = ssl.create_default_context(cadata=identity.trust_anchors_pem.decode())
        anchors = httpx.get(f"{identity.url}/v1/trust-anchors", verify=trusted, trust_env=False)
        assert anchors.content == identity.trust_anchors_pem
    p.stop(grace=0.1)
    assert logger_state() == before
    assert configured_uvicorn_loggers["uvicorn.access"].records == []  # both served, neither logged it
    assert configured_uvicorn_loggers["uvicorn.error"].records  # uvicorn's own log still reaches the host's
