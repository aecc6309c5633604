"""The identity service listens on the network: what one client may take of it is bounded (body size,
time to send a head, connections), it serves clients side by side, and close() ends it promptly."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from conftest import wait_until, wait_until_read_by_peer
from meshcore.errors import BindError, TlsError
from meshcore.identity import IdentityService, ServerLimits, cert_info, init_ca, request_certificate

WEB = "ns/default/sa/web"
TOKENS = {"tok-web": WEB}
CERTIFY_HEAD = b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nAuthorization: Bearer tok-web\r\n"
# A head that never ends: its last header goes on and on.
ENDLESS_HEAD = b"GET /v1/trust-anchors HTTP/1.1\r\nHost: identity\r\nX-Pad: " + b"a" * 4000


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("identity-limits") / "ca"
    init_ca(directory)
    return directory


@pytest.fixture(scope="module")
def service(ca: Path) -> Iterator[IdentityService]:
    with IdentityService(ca, tokens=TOKENS) as svc:
        yield svc


def anchor(ca: Path) -> bytes:
    return (ca / "trust-anchor.pem").read_bytes()


def tls_connect(service: IdentityService, ca: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=anchor(ca).decode())
    sock = socket.create_connection(service.address, timeout=10)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return received
        if not data:
            return received
        received += data


def certifies(service: IdentityService, ca: Path) -> bool:
    chain, _, _ = request_certificate(service.url, "tok-web", WEB, anchor(ca))
    return cert_info(chain)["spiffe_id"] == f"spiffe://mesh.local/{WEB}"


# --- the body cap -----------------------------------------------------------------------------------


def test_a_huge_declared_body_is_refused_unread_and_the_service_stays_up(service: IdentityService, ca: Path):
    with tls_connect(service, ca) as sock:
        # Nothing of the gigabyte is sent: the answer comes from the head alone, and the server
        # closes rather than wait for the body.
        sock.sendall(CERTIFY_HEAD + b"Content-Length: 1073741824\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.endswith(b'{"error": "body larger than 65536 bytes"}'), answer
    assert certifies(service, ca)


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_cap(service: IdentityService, ca: Path):
    with tls_connect(service, ca) as sock:
        # Chunked, so no length is declared: 64 KiB and one byte arrive, and the body never ends.
        chunks = b"400\r\n" + b"x" * 1024 + b"\r\n"
        sock.sendall(CERTIFY_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks * 64 + b"1\r\nx\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b'{"error": "body larger than 65536 bytes"}'), answer
    assert certifies(service, ca)


def test_a_small_chunked_body_is_read(service: IdentityService, ca: Path):
    context = ssl.create_default_context(cadata=anchor(ca).decode())
    r = httpx.post(
        f"{service.url}/v1/certify",
        content=iter([b"{not ", b"json"]),  # an iterator is sent chunked
        headers={"Authorization": "Bearer tok-web"},
        verify=context,
        trust_env=False,
    )
    assert r.status_code == 400 and r.json() == {"error": "body is not JSON"}


# --- slow clients -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_service(ca: Path) -> Iterator[IdentityService]:
    with IdentityService(ca, tokens=TOKENS, limits=ServerLimits(head_timeout=0.5)) as svc:
        yield svc


def test_a_client_that_never_finishes_its_tls_handshake_is_cut_off(strict_service: IdentityService, ca: Path):
    with socket.create_connection(strict_service.address, timeout=10) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= 0.4  # closed by the deadline, not refused at once
        assert certifies(strict_service, ca)  # others were served meanwhile


def test_a_client_that_stalls_in_its_head_is_cut_off(strict_service: IdentityService, ca: Path):
    with tls_connect(strict_service, ca) as sock:
        started = time.monotonic()
        sock.sendall(ENDLESS_HEAD[:40])
        wait_until_read_by_peer(sock)
        assert certifies(strict_service, ca)  # served while the slow client holds its connection
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= 0.4


def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_deadline(strict_service: IdentityService, ca: Path):
    """Progress does not extend the deadline: a slowloris client keeps sending a byte at a time."""
    with tls_connect(strict_service, ca) as sock:
        sock.settimeout(0.05)  # how long to wait for the server's close between two bytes
        started, sent = time.monotonic(), 0
        while True:
            assert time.monotonic() - started < 10, "the server never cut the slow client off"
            try:
                sock.sendall(ENDLESS_HEAD[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                break  # closed while we were sending
            sent += 1
            try:
                if sock.recv(1) == b"":
                    break
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLEOFError):
                break
            pytest.fail("the server answered a head that never ended")
        assert sent < len(ENDLESS_HEAD), "the whole head went through without a cut-off"
        assert time.monotonic() - started >= 0.4
        assert sent > 2


# --- concurrency ------------------------------------------------------------------------------------


def test_the_service_answers_concurrent_requests(service: IdentityService, ca: Path):
    # Two slow clients hold connections mid-head all along; the service serves the rest regardless.
    slow = [tls_connect(service, ca) for _ in range(2)]
    for sock in slow:
        sock.sendall(ENDLESS_HEAD[:40])
    clients = 12
    start_together = threading.Barrier(clients, timeout=10)

    def certify(_: int) -> bytes:
        start_together.wait()
        return request_certificate(service.url, "tok-web", WEB, anchor(ca))[0]

    try:
        with ThreadPoolExecutor(clients) as pool:
            chains = list(pool.map(certify, range(clients)))
    finally:
        for sock in slow:
            sock.close()
    assert len(set(chains)) == clients
    assert all(cert_info(chain)["spiffe_id"] == f"spiffe://mesh.local/{WEB}" for chain in chains)


def test_requests_past_the_connection_limit_get_503(ca: Path):
    with IdentityService(ca, tokens=TOKENS, limits=ServerLimits(max_connections=3)) as svc:
        context = ssl.create_default_context(cadata=anchor(ca).decode())

        def status() -> int:
            url = f"{svc.url}/v1/trust-anchors"
            return httpx.get(url, verify=context, trust_env=False).status_code

        held = [tls_connect(svc, ca) for _ in range(2)]  # with the request's own, three are open
        wait_until(lambda: status() == 503, what="a 503 once the connections are all taken")
        with pytest.raises(TlsError, match="503"):
            request_certificate(svc.url, "tok-web", WEB, anchor(ca))
        for sock in held:
            sock.close()
        wait_until(lambda: status() == 200, what="a 200 once connections are free again")


# --- lifecycle --------------------------------------------------------------------------------------


def test_close_cuts_off_clients_and_frees_the_port(ca: Path):
    before = set(threading.enumerate())
    svc = IdentityService(ca, tokens=TOKENS, limits=ServerLimits(shutdown_grace=0.2))
    threads = set(threading.enumerate()) - before
    port = svc.address[1]
    idle, in_flight = tls_connect(svc, ca), tls_connect(svc, ca)
    idle.sendall(ENDLESS_HEAD[:40])
    in_flight.sendall(CERTIFY_HEAD + b"Content-Length: 100\r\n\r\n{")  # the body never comes
    wait_until_read_by_peer(in_flight)
    svc.close()
    assert [t.name for t in threads] == ["meshcore-identity-service"]
    assert not any(t.is_alive() for t in threads)  # joined
    for sock in (idle, in_flight):
        with sock:
            read_until_closed(sock)
    with IdentityService(ca, f"127.0.0.1:{port}", tokens=TOKENS) as again:
        assert certifies(again, ca)


def test_a_port_in_use_is_a_bind_error(service: IdentityService, ca: Path):
    with pytest.raises(BindError, match=f"identity service cannot bind 127.0.0.1:{service.address[1]}"):
        IdentityService(ca, f"127.0.0.1:{service.address[1]}", tokens=TOKENS, ttl=timedelta(hours=1))
    assert certifies(service, ca)
