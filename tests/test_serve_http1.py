"""The proxy's own HTTP/1.1 server (simple requests) and its hand-over to
hyper for everything else, seen from raw client sockets."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator

import httpx

from conftest import one_service, wait_until_read_by_peer


def read_response(s: socket.socket, buf: bytes = b"") -> tuple[bytes, dict[str, str], bytes, bytes]:
    """One response from `s`: status line, headers, body, and bytes after it."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before a full head: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, v in (line.split(b": ", 1) for line in lines)}
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(rest) < want:
            rest += s.recv(65536)
        return status, headers, rest[:want], rest[want:]
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += s.recv(65536)
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += s.recv(65536)
        body, rest = body + rest[:size], rest[size + 2 :]
        if size == 0:
            return status, headers, body, rest


def test_pipelined_requests_are_answered_in_order(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        rest = b""
        for i in range(3):
            status, _, body, rest = read_response(s, rest)
            assert status == b"HTTP/1.1 200 OK"
            assert body.endswith(b"path=/p/%d\n" % i)


def test_connection_close_is_honoured(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _, rest = read_response(s)
        assert status == b"HTTP/1.1 200 OK"
        assert headers["connection"] == "close"
        assert rest == b"" and s.recv(100) == b""


def test_head_answer_keeps_its_length_and_the_connection(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, _ = read_response_head(s)
        assert status == b"HTTP/1.1 200 OK"
        assert headers["content-length"] == str(len(b"hello from b (zone-a) path=/x\n"))  # the GET's
        s.sendall(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_response(s)
        assert body.endswith(b"path=/y\n")


def read_response_head(s: socket.socket) -> tuple[bytes, dict[str, str], None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert rest == b"", "a HEAD answer carried a body"
    status, *lines = head.split(b"\r\n")
    return status, {k.decode().lower(): v.decode() for k, v in (x.split(b": ", 1) for x in lines)}, None, rest


def test_local_answers_carry_date_and_length(proxy):
    cfg = one_service(["127.0.0.1:9"])
    cfg["routes"][0]["path_prefix"] = "/only"
    p = proxy(cfg)
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        before = time.time()
        s.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_response(s)
        after = time.time()
    assert status == b"HTTP/1.1 404 Not Found"
    assert body == b"no route\n" and headers["content-length"] == str(len(body))
    # The date of the answer, to the second (a cached date may be a second old).
    sent = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    assert int(before) - 1 <= sent <= after


def test_body_of_unknown_length_is_chunked_and_not_held_back(upstream, proxy):
    # A close-delimited upstream body that has not ended: the client gets it
    # chunked, and gets what has arrived without waiting for the rest.
    u = upstream(lambda head, c, n: b"HTTP/1.1 200 OK\r\n\r\nfirst;")
    p = proxy(one_service([u.addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"first;" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
    assert b"transfer-encoding: chunked" in got.lower()
    assert b"6\r\nfirst;\r\n" in got


def test_streamed_chunks_are_not_held_back(upstream, proxy):
    # The upstream sends its second chunk only once the client has the first:
    # a proxy that held chunks back would deliver neither.
    first_arrived = threading.Event()

    def answer(head: bytes, c: int, n: int) -> Iterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndrop 0\n\r\n"
        if first_arrived.wait(10):
            yield b"7\r\ndrop 1\n\r\n0\r\n\r\n"

    p = proxy(one_service([upstream(answer).addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=10) as s:
        s.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"drop 0" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        first_arrived.set()
        status, _, body, _ = read_response(s, got)
    assert (status, body) == (b"HTTP/1.1 200 OK", b"drop 0\ndrop 1\n")


def test_requests_hyper_handles_keep_the_connection_serving(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2].endswith(b"path=/first\n")
        # A body: from here the connection is hyper's.
        s.sendall(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert read_response(s)[2] == b"5"
        s.sendall(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2].endswith(b"path=/third\n")


def test_expect_continue_and_split_heads_are_served(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"abc")
        assert read_response(s)[2] == b"3"
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET /sp")
        wait_until_read_by_peer(s)  # the proxy has read the first piece alone
        s.sendall(b"lit HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2].endswith(b"path=/split\n")


def test_http10_client_is_served(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.0 200 OK") and got.endswith(b"path=/old\n")


def test_many_keep_alive_requests_count_once_each(backend, proxy):
    b = backend()
    p = proxy(one_service([b.addr]))
    with httpx.Client() as client:
        for _ in range(50):
            assert client.get(p.url("outbound", "/")).status_code == 200
    assert b.requests == 50


def test_idle_keep_alive_connection_is_closed_after_the_header_timeout(backend, proxy):
    cfg = one_service([backend().addr])
    cfg["listeners"][0]["header_read_timeout"] = "1s"
    p = proxy(cfg)
    with socket.create_connection(p.addresses["outbound"], timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == b"HTTP/1.1 200 OK"
        # Kept alive for a request that follows at once...
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == b"HTTP/1.1 200 OK"
        # ...and closed once idle: recv returns the end of the stream, long before its own 10 s timeout.
        assert s.recv(100) == b""


def test_stop_closes_idle_keep_alive_connections(backend, proxy):
    p = proxy(one_service([backend().addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == b"HTTP/1.1 200 OK"
        stopper = threading.Thread(target=p.stop, kwargs={"grace": 60})
        stopper.start()
        # Closed by the drain, not left open until the 60 s grace runs out.
        assert s.recv(100) == b""
        stopper.join(30)
        assert not stopper.is_alive(), "stop() waited out the grace for an idle connection"


def test_head_answer_of_unknown_length_states_none(upstream, proxy):
    # A HEAD whose GET would be chunked: the answer must not claim a length of 0.
    u = upstream(lambda head, c, n: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    p = proxy(one_service([u.addr]))
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, _ = read_response_head(s)
    assert status == b"HTTP/1.1 200 OK"
    assert "content-length" not in headers and "transfer-encoding" not in headers


def test_own_answers_cannot_set_their_framing_or_keep_a_closing_connection(proxy):
    cfg = one_service([])
    cfg["routes"][0]["backends"] = []
    cfg["routes"][0]["direct_response"] = {
        "status": 200,
        "body": "5\r\nsplit\r\n0\r\n\r\n",
        "headers": {"transfer-encoding": "chunked", "content-length": "zz", "connection": "close"},
    }
    p = proxy(cfg)
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, rest = read_response(s)
        # The body goes out as the bytes it is, framed by the proxy.
        assert body == b"5\r\nsplit\r\n0\r\n\r\n"
        assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers
        assert headers["connection"] == "close"
        assert rest == b"" and s.recv(100) == b""


def test_own_answer_with_a_wrong_length_is_sent_with_its_real_one(proxy):
    cfg = one_service([])
    cfg["routes"][0]["backends"] = []
    cfg["routes"][0]["direct_response"] = {
        "status": 200,
        "body": "short",
        "headers": {"content-length": "99"},
    }
    p = proxy(cfg)
    with socket.create_connection(p.addresses["outbound"], timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, body, rest = read_response(s)
        assert (headers["content-length"], body) == ("5", b"short")
        # The connection is still in step: the second answer follows.
        assert read_response(s, rest)[2] == b"short"
