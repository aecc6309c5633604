"""The proxy's upstream side against upstreams that answer with scripted
bytes: its own HTTP/1.1 client (bodiless requests to plain-TCP endpoints:
framing, reuse, 1xx, stale pooled connections, broken answers) and HTTP/2
streams refused by a GOAWAY."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from conftest import Answer, one_service, wait_until

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_chunked_response_with_extensions_and_trailers_then_reuse(upstream, proxy):
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: abc\r\n\r\n"
    )
    u = upstream(lambda head, c, n: chunked if n == 1 else OK)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        r = client.get(p.url("outbound", "/"))
        assert r.status_code == 200
        assert r.content == b"hello, world"
        assert client.get(p.url("outbound", "/")).text == "ok"
    assert u.connections == 1


def test_bodiless_statuses_and_head_do_not_wait_for_a_body(upstream, proxy):
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        b"GET /204": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"GET /304": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
    }

    def script(head: bytes, c: int, n: int) -> Answer:
        return next((a for k, a in answers.items() if head.startswith(k)), OK)

    u = upstream(script)
    p = proxy(one_service([u.addr]))
    with httpx.Client(timeout=3) as client:
        r = client.head(p.url("outbound", "/"))
        assert (r.status_code, r.headers["content-length"]) == (200, "5")
        assert client.get(p.url("outbound", "/204")).status_code == 204
        assert client.get(p.url("outbound", "/304")).status_code == 304
        assert client.get(p.url("outbound", "/")).text == "ok"
    assert u.connections == 1


def test_informational_answers_are_skipped(upstream, proxy):
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + OK
    u = upstream(lambda head, c, n: early)
    p = proxy(one_service([u.addr]))
    r = httpx.get(p.url("outbound", "/"))
    assert (r.status_code, r.text) == (200, "ok")


def test_close_delimited_body_is_read_to_the_end_and_not_reused(upstream, proxy):
    u = upstream(lambda head, c, n: b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000, close_after=True)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        for _ in range(2):
            r = client.get(p.url("outbound", "/"))
            assert r.content == b"x" * 100_000
    assert u.connections == 2


def test_large_bodies_arrive_intact(upstream, proxy):
    blob = bytes(range(256)) * 16_384  # 4 MiB
    length = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(blob) + blob
    pieces = b"".join(b"%x\r\n" % 70_000 + blob[i : i + 70_000] + b"\r\n" for i in range(0, 700_000, 70_000))
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + pieces + b"0\r\n\r\n"
    u = upstream(lambda head, c, n: length if b"/length" in head else chunked)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/length")).content == blob
        assert client.get(p.url("outbound", "/chunked")).content == blob[:700_000]
        assert client.get(p.url("outbound", "/length")).content == blob
    assert u.connections == 1


def test_request_head_is_forwarded_as_http11(upstream, proxy):
    u = upstream(lambda head, c, n: OK)
    p = proxy(one_service([u.addr]))
    httpx.post(
        p.url("outbound", "/submit?q=1"),
        headers={"x-kept": "yes", "connection": "keep-alive, x-gone", "x-gone": "1"},
    )
    head = u.heads[0].decode()
    request_line, *lines = head.split("\r\n")
    assert request_line == "POST /submit?q=1 HTTP/1.1"
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    assert fields["x-kept"] == "yes"
    assert fields["host"] == p.url("outbound", "/").split("/")[2]
    # An empty POST says so; hop-by-hop headers stay behind.
    assert fields["content-length"] == "0"
    assert "x-gone" not in fields and "connection" not in fields


def drop_second_request_on_first_connection(head: bytes, c: int, n: int) -> Answer:
    """Reads the request and never answers: what a server closing an idle
    connection looks like to a request racing the close."""
    return None if (c == 1 and n == 2) else OK


def test_connection_closed_while_pooled_is_replaced_for_idempotent_requests(upstream, proxy):
    u = upstream(drop_second_request_on_first_connection)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/")).text == "ok"
        r = client.get(p.url("outbound", "/"))
        assert (r.status_code, r.text) == (200, "ok")
    assert u.connections == 2


def test_connection_closed_while_pooled_fails_a_post_rather_than_resend_it(upstream, proxy):
    u = upstream(drop_second_request_on_first_connection)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/")).text == "ok"
        r = client.post(p.url("outbound", "/"))
        assert r.status_code == 502
        assert client.post(p.url("outbound", "/")).text == "ok"
    assert len(u.heads) == 3  # the POST that may have been seen was not sent twice


def test_idle_close_is_noticed_before_reuse(upstream, proxy):
    # Answers keep-alive, then closes anyway: the proxy sees the close while
    # the connection is pooled and does not send a POST into it.
    u = upstream(lambda head, c, n: OK, close_after=True)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        for i in range(3):
            assert client.get(p.url("outbound", "/")).text == "ok"
            # The upstream has closed: its FIN is on the way to the proxy's pooled connection.
            wait_until(lambda: len(u.closed) == 2 * i + 1, what="the upstream to close")  # noqa: B023
            assert client.post(p.url("outbound", "/")).text == "ok"
            wait_until(lambda: len(u.closed) == 2 * i + 2, what="the upstream to close")  # noqa: B023
    assert u.connections == 6


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="bad-status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", id="conflicting-length"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n", id="bad-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n", id="head-too-large"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="unasked-upgrade"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n", id="closed-mid-head"),
    ],
)
def test_broken_response_heads_are_502_and_the_proxy_keeps_serving(upstream, proxy, answer):
    u = upstream(lambda head, c, n: answer if b"/broken" in head else OK, close_after=True)
    p = proxy(one_service([u.addr], admin=True))
    r = httpx.get(p.url("outbound", "/broken"))
    assert r.status_code == 502
    assert r.headers["meshcore-error"].startswith("upstream error")
    assert httpx.get(p.url("outbound", "/")).text == "ok"


def test_body_cut_short_ends_the_client_response_without_reusing(upstream, proxy):
    short = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"y" * 10
    u = upstream(lambda head, c, n: short if b"/short" in head else OK, close_after=True)
    p = proxy(one_service([u.addr]))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(p.url("outbound", "/short"))
    assert httpx.get(p.url("outbound", "/")).text == "ok"


def test_framing_headers_set_by_filters_do_not_desynchronise_the_upstream(upstream, proxy):
    u = upstream(lambda head, c, n: OK)
    route = {"request_headers": {"set": {"content-length": "10", "transfer-encoding": "chunked"}}}
    p = proxy(one_service([u.addr], route=route))
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(p.url("outbound", "/")).text == "ok"
    lines = u.heads[0].decode().lower().split("\r\n")
    assert "content-length: 0" in lines and not any(x.startswith("transfer-encoding") for x in lines)
    assert len(u.heads) == 3 and u.connections == 1


def test_answer_with_both_framings_is_read_but_its_connection_not_reused(upstream, proxy):
    both = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    u = upstream(lambda head, c, n: both)
    p = proxy(one_service([u.addr]))
    with httpx.Client() as client:
        r = client.get(p.url("outbound", "/"))
        # Chunked wins; the Content-Length that contradicts it is not passed on.
        assert r.text == "ok" and r.headers.get("content-length") != "3"
        assert client.get(p.url("outbound", "/")).text == "ok"
    assert u.connections == 2


class RefusingH2Upstream:
    """An HTTP/2 upstream whose first connection answers one request, then
    refuses the next with GOAWAY (last stream = the answered one) and closes,
    as a server rotating its connections does."""

    def __init__(self, reset_only: bool = False) -> None:
        # reset_only: refuse the stream with RST_STREAM(REFUSED_STREAM) and keep the connection.
        self.reset_only = reset_only
        self.requests: list[tuple[int, str, str]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        index = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            index += 1
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.events import RequestReceived

        h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        h2.initiate_connection()
        conn.sendall(h2.data_to_send())
        answered = 0
        with conn:
            while data := conn.recv(65536):
                for event in h2.receive_data(data):
                    if not isinstance(event, RequestReceived):
                        continue
                    head = dict(event.headers)
                    self.requests.append((index, head[":method"], head[":path"]))
                    if index == 1 and answered == 1 and self.reset_only:
                        h2.reset_stream(event.stream_id, error_code=7)  # REFUSED_STREAM
                        answered += 1
                        continue
                    if index == 1 and answered == 1:
                        h2.close_connection(error_code=0, last_stream_id=event.stream_id - 2)
                        conn.sendall(h2.data_to_send())
                        return
                    h2.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
                    h2.send_data(event.stream_id, b"ok", end_stream=True)
                    answered += 1
                conn.sendall(h2.data_to_send())

    def stop(self) -> None:
        self._sock.close()


def test_http2_stream_refused_by_goaway_is_resent_when_idempotent(proxy):
    u = RefusingH2Upstream()
    p = proxy(one_service([u.addr], protocol="http2"))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/a")).text == "ok"
        r = client.get(p.url("outbound", "/b"))
        assert (r.status_code, r.text) == (200, "ok")
    assert u.requests == [(1, "GET", "/a"), (1, "GET", "/b"), (2, "GET", "/b")]
    u.stop()


def test_http2_stream_refused_by_goaway_fails_a_post_rather_than_resend_it(proxy):
    u = RefusingH2Upstream()
    p = proxy(one_service([u.addr], protocol="http2"))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/a")).text == "ok"
        assert client.post(p.url("outbound", "/b")).status_code == 502
    assert u.requests == [(1, "GET", "/a"), (1, "POST", "/b")]
    u.stop()


def test_http2_stream_refused_alone_is_resent_on_the_same_connection(proxy):
    u = RefusingH2Upstream(reset_only=True)
    p = proxy(one_service([u.addr], protocol="http2"))
    with httpx.Client() as client:
        assert client.get(p.url("outbound", "/a")).text == "ok"
        r = client.get(p.url("outbound", "/b"))
        assert (r.status_code, r.text) == (200, "ok")
    # The connection is still good: no new one for a refused stream.
    assert u.requests == [(1, "GET", "/a"), (1, "GET", "/b"), (1, "GET", "/b")]
    u.stop()


def test_idle_upstream_connections_close_after_idle_timeout_without_traffic(proxy):
    """Checkouts skip expired connections, but a pool nobody uses any more must
    not keep them (and their descriptors) open: a sweep closes them."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            while conn.recv(65536):  # until the proxy closes its end
                pass
            closed.set()

    threading.Thread(target=serve, daemon=True).start()
    cfg = one_service([f"127.0.0.1:{server.getsockname()[1]}"])
    cfg["services"][0]["idle_timeout"] = "1s"
    p = proxy(cfg)
    assert httpx.get(p.url("outbound", "/")).text == "ok"
    # Swept every 5 s: closed well within 15 s of going idle, with no request since.
    assert closed.wait(15), "the idle upstream connection was never closed"
    server.close()
