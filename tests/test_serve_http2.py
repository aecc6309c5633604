"""The proxy's own HTTP/2 server, frame by frame: flow control both ways,
pings, CONTINUATION, malformed requests, limits and connection errors,
driven by the `h2` library over a plain socket."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from conftest import one_service, refuses_connections, require_tool, wait_until
from h2_client import Client


@pytest.fixture
def h2proxy(backend, proxy):
    p = proxy(one_service([backend("web-1").addr], listener_protocol="http2"))
    clients: list[Client] = []

    def connect(**kw) -> Client:
        c = Client(p.addresses["outbound"], **kw)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()


def test_many_streams_on_one_connection_each_get_their_own_answer(h2proxy):
    c = h2proxy()
    ids = [c.request(f"/n/{i}") for i in range(50)]
    c.pump(lambda: all(i in c.ended for i in ids))
    for n, sid in enumerate(ids):
        assert c.headers[sid][":status"] == "200"
        assert "date" in c.headers[sid]
        assert c.data[sid].decode() == f"hello from web-1 (zone-a) path=/n/{n}\n"


def test_ping_is_answered_with_its_payload(h2proxy):
    c = h2proxy()
    c.conn.ping(b"meshcore")
    c.flush()
    c.pump(lambda: c.pings)
    assert c.pings == [b"meshcore"]


def data_bytes(c: Client, sid: int) -> int:
    """DATA payload bytes received on `sid`, counted from the raw frames: the
    h2 library would refuse a frame past the window rather than record it."""
    return sum(len(payload) for kind, _, stream, payload in c.raw_frames if kind == 0x0 and stream == sid)


def test_response_waits_for_the_clients_window_and_respects_its_frame_size(upstream, proxy):
    size = 200_000
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size
    u = upstream(lambda *_: answer, close_after=True)
    p = proxy(one_service([u.addr], listener_protocol="http2"))
    c = Client(p.addresses["outbound"], settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    try:
        c.auto_window = False
        sid = c.request("/bytes")
        c.pump(lambda: data_bytes(c, sid) >= 1000)
        # The upstream has handed over the whole body, and the server has no window
        # for the rest: whatever it sends before answering a PING sent now shows
        # whether it holds the rest back.
        wait_until(lambda: u.closed == [1], what="the upstream to finish sending its body")
        c.conn.ping(b"barrier!")
        c.flush()
        c.pump(lambda: b"barrier!" in c.pings)
        assert data_bytes(c, sid) == 1000, "the server sent past the stream window"
        assert not c.library_refused
        c.auto_window = True
        c.conn.acknowledge_received_data(1000, sid)
        c.flush()
        c.pump(lambda: sid in c.ended, timeout=10)
        assert bytes(c.data[sid]) == b"x" * size
        assert max(c.frames[sid]) <= 16384
    finally:
        c.close()


def test_upload_larger_than_the_windows_streams_through(h2proxy):
    c = h2proxy()
    size = 3 * 1024 * 1024
    sid = c.request("/count", method="POST", end=False, extra=[("content-length", str(size))])
    c.send_body(sid, size)
    c.pump(lambda: sid in c.ended, timeout=15)
    assert c.data[sid] == str(size).encode()


def test_header_block_over_continuation_frames(h2proxy):
    c = h2proxy()
    # 40 KB of headers cannot fit one 16 KiB frame; h2 splits them.
    sid = c.request("/headers", extra=[(f"x-big-{i}", "v" * 4000) for i in range(10)])
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "200"
    assert b'"x-big-9": "' + b"v" * 4000 in bytes(c.data[sid])


def test_oversized_head_gets_431_and_the_connection_goes_on(h2proxy):
    c = h2proxy()
    sid = c.request("/", extra=[(f"x-huge-{i}", "v" * 12000) for i in range(9)])
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "431"
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


@pytest.mark.parametrize(
    "extra, reason",
    [
        ([("connection", "keep-alive")], "connection-specific"),
        ([("X-Upper", "1")], "invalid header field"),
        ([("te", "gzip")], "connection-specific"),
    ],
)
def test_malformed_request_gets_400_and_the_connection_goes_on(h2proxy, extra, reason):
    c = h2proxy(validate=False)
    sid = c.request("/", extra=extra)
    c.pump(lambda: sid in c.resets)
    # RFC 9113 8.1.1: a malformed request is a stream error (PROTOCOL_ERROR);
    # the 400 before it says why.
    assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR
    assert c.headers[sid][":status"] == "400"
    assert reason in c.headers[sid]["meshcore-error"]
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


def test_missing_pseudo_header_gets_400(h2proxy):
    c = h2proxy(validate=False)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "GET"), (":authority", "web")], end_stream=True)
    c.flush()
    c.pump(lambda: sid in c.resets)
    assert c.headers[sid][":status"] == "400"
    assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR


def test_body_longer_than_content_length_resets_the_stream(h2proxy):
    c = h2proxy()
    sid = c.request("/count", method="POST", end=False, extra=[("content-length", "5")])
    # h2 checks content-length on its own side too; write the frame by hand.
    c.send_raw(0x0, 0x1, sid, b"0123456789")
    c.pump(lambda: sid in c.resets)
    assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR
    again = c.request("/after")
    c.pump(lambda: again in c.ended)
    assert c.headers[again][":status"] == "200"


class RecordingH2Upstream:
    """An h2c upstream that records each request's headers, body and trailers,
    and answers 200 "ok" once the request has ended."""

    def __init__(self) -> None:
        self.requests: dict[int, dict] = {}
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.events import DataReceived, RequestReceived, StreamEnded, TrailersReceived

        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        h2.initiate_connection()
        conn.sendall(h2.data_to_send())
        with conn:
            while data := conn.recv(65536):
                for event in h2.receive_data(data):
                    if isinstance(event, RequestReceived):
                        self.requests[event.stream_id] = {"headers": dict(event.headers), "body": b""}
                    elif isinstance(event, DataReceived):
                        self.requests[event.stream_id]["body"] += event.data
                        h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, TrailersReceived):
                        self.requests[event.stream_id]["trailers"] = dict(event.headers)
                    elif isinstance(event, StreamEnded):
                        h2.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
                        h2.send_data(event.stream_id, b"ok", end_stream=True)
                conn.sendall(h2.data_to_send())

    def stop(self) -> None:
        self._sock.close()


def test_request_trailers_reach_an_http2_upstream(proxy):
    u = RecordingH2Upstream()
    p = proxy(one_service([u.addr], protocol="http2", listener_protocol="http2"))
    c = Client(p.addresses["outbound"])
    try:
        sid = c.request("/upload", method="POST", end=False)
        c.conn.send_data(sid, b"hello ")
        c.conn.send_data(sid, b"world")
        c.conn.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
        c.flush()
        c.pump(lambda: sid in c.ended)
        assert (c.headers[sid][":status"], bytes(c.data[sid])) == ("200", b"ok")
    finally:
        c.close()
        u.stop()
    [seen] = u.requests.values()
    assert seen["body"] == b"hello world"
    assert seen["trailers"] == {"x-checksum": "abc"}


def test_request_trailers_end_the_body_towards_an_http1_upstream(h2proxy):
    # The trailers end the stream, so the chunked body must end with them: the
    # backend echoes the body only once it has read its last chunk. (They are
    # not passed on to HTTP/1.1, as Envoy does by default.)
    c = h2proxy()
    sid = c.request("/echo", method="POST", end=False)
    c.conn.send_data(sid, b"hello ")
    c.conn.send_data(sid, b"world")
    c.conn.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
    c.flush()
    c.pump(lambda: sid in c.ended)
    assert bytes(c.data[sid]) == b"hello world"


def test_client_reset_cancels_only_its_stream(backend, proxy):
    b = backend("web-1")
    p = proxy(one_service([b.addr], listener_protocol="http2"))
    c = Client(p.addresses["outbound"])
    try:
        slow = c.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/delay/2000")]
        c.conn.send_headers(slow, headers, end_stream=True)
        c.conn.reset_stream(slow, ErrorCodes.CANCEL)
        c.flush()  # one write: the reset arrives with the request
        fast = c.request("/fast")
        c.pump(lambda: fast in c.ended)
        assert c.headers[fast][":status"] == "200"
        assert slow not in c.headers
        # The reset request was dropped before it was sent upstream.
        assert b.requests == 1
    finally:
        c.close()


def connecting_to(port: int, besides: set[int]) -> int:
    """Sockets on this machine still connecting (SYN_SENT) to 127.0.0.1:`port`,
    leaving out those on the local ports in `besides`."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[3] == "02" and remote_port == port and local_port not in besides:
                count += 1
    return count


def test_streams_reset_together_with_a_new_one_free_their_slots(proxy):
    # Uploads whose handlers still hold their request bodies (the upstream
    # never accepts: its listen queue is full), then their resets and a new
    # request in one write. The new stream finds the aborted ones holding
    # their slots, and they are released while it is being set up; releasing
    # a body locks the connection's state, which must not be held then.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    for _ in range(3):  # non-blocking: the queue holds one, the others wait for it
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(stuck.getsockname())
        fillers.append(f)
    cfg = one_service([f"127.0.0.1:{stuck.getsockname()[1]}"], listener_protocol="http2")
    cfg["services"][0]["connect_timeout"] = "2s"
    p = proxy(cfg)
    c = Client(p.addresses["outbound"])
    try:
        uploads = [c.request(f"/upload/{i}", method="POST", end=False) for i in range(5)]
        port, filler_ports = stuck.getsockname()[1], {f.getsockname()[1] for f in fillers}
        wait_until(
            lambda: connecting_to(port, filler_ports) == 5,
            what="the five uploads to be connecting upstream, each holding its body",
        )
        for sid in uploads:
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        after = c.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/after")]
        c.conn.send_headers(after, headers, end_stream=True)
        c.flush()  # one write: the resets and the new request
        c.pump(lambda: after in c.ended, timeout=10)
        # Served, not stuck behind the released slots: it meets the same full upstream.
        assert (c.headers[after][":status"], c.headers[after]["meshcore-error"]) == (
            "502",
            "connect timed out",
        )
    finally:
        c.close()
        for f in fillers:
            f.close()
        stuck.close()


def open_and_kill(c: Client, kill, count: int = 1200) -> int:
    """Opens `count` slow streams, each followed by `kill(sid)`; the GOAWAY's code."""
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/delay/1000")]
    for _ in range(count):
        if c.goaway is not None:
            break
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, headers, end_stream=True)
        kill(sid)
    c.flush()
    c.pump(lambda: c.goaway is not None, timeout=10)
    return c.goaway.error_code


def test_rapid_reset_is_cut_off(h2proxy):
    c = h2proxy()
    # Open and reset streams faster than they can be answered (CVE-2023-44487).
    code = open_and_kill(c, lambda sid: c.conn.reset_stream(sid, ErrorCodes.CANCEL))
    assert code == ErrorCodes.ENHANCE_YOUR_CALM


def test_streams_beyond_the_concurrency_limit_are_refused(h2proxy):
    c = h2proxy()
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 200)
    # Ignore the advertised limit on our side, to see the server enforce it.
    c.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
    c.conn.remote_settings.acknowledge()
    ids = [c.request("/delay/500") for _ in range(210)]
    c.pump(lambda: all(i in c.ended or i in c.resets for i in ids), timeout=15)
    refused = [i for i in ids if c.resets.get(i) == ErrorCodes.REFUSED_STREAM]
    assert len(refused) == 10
    assert all(c.headers[i][":status"] == "200" for i in ids if i not in refused)


@pytest.mark.parametrize(
    "frame, code",
    [
        ((0x8, 0x0, 0, struct.pack(">I", 0x7FFFFFFF)), ErrorCodes.FLOW_CONTROL_ERROR),  # window overflow
        ((0x6, 0x0, 0, b"short"), ErrorCodes.FRAME_SIZE_ERROR),  # PING of 5 bytes
        ((0x9, 0x4, 1, b""), ErrorCodes.PROTOCOL_ERROR),  # CONTINUATION without HEADERS
        ((0x0, 0x1, 9, b"x"), ErrorCodes.PROTOCOL_ERROR),  # DATA on an idle stream
        ((0x5, 0x4, 1, b"\x00\x00\x00\x02"), ErrorCodes.PROTOCOL_ERROR),  # PUSH_PROMISE from a client
        ((0x1, 0x5, 1, b"\xff\xff\xff"), ErrorCodes.COMPRESSION_ERROR),  # undecodable header block
    ],
)
def test_connection_errors_end_with_goaway(h2proxy, frame, code):
    c = h2proxy()
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 200)
    c.send_raw(*frame)
    c.pump(lambda: c.goaway is not None)
    assert c.goaway.error_code == code
    c.pump(lambda: c.closed)


def test_bodies_of_refused_requests_do_not_hold_the_connection_window(h2proxy):
    c = h2proxy(validate=False)
    c.pump(lambda: c.conn.outbound_flow_control_window > 65535)
    # Each of these is answered 400 without its body being read; the body's
    # bytes must still go back to the connection window.
    # 960,000 bytes: most of the 1 MiB connection window, sent past h2's own accounting.
    for _ in range(60):
        sid = c.request("/count", method="POST", end=False, extra=[("content-length", "abc")])
        c.send_raw(0x0, 0x1, sid, b"z" * 16000)
    size = 160_000
    sid = c.request("/count", method="POST", end=False)
    c.send_body(sid, size)
    c.pump(lambda: sid in c.ended, timeout=10)
    assert c.data[sid] == str(size).encode()


def test_resets_the_client_provokes_count_as_rapid_resets(h2proxy):
    c = h2proxy()

    def provoke(sid: int) -> None:
        c.flush()
        c.send_raw(0x8, 0x0, sid, struct.pack(">I", 0))  # WINDOW_UPDATE of 0: the server resets it

    assert open_and_kill(c, provoke) == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_ping_flood_is_cut_off_and_others_are_still_served(h2proxy):
    c = h2proxy()
    c.pump(lambda: c.settings_acked)
    ping = struct.pack(">I", 8)[1:] + bytes([0x6, 0x0]) + struct.pack(">I", 0) + b"pingpong"

    def acks() -> list[int]:
        """Positions of the PING acks among the frames received."""
        return [i for i, (kind, flags, _, _) in enumerate(c.raw_frames) if kind == 0x6 and flags & 0x1]

    # Well past the 10,000 frames without work allowed per 10 s; the client
    # reads the acks as it goes (each batch waits for a new one), so this is a
    # flood while reading.
    sent = 0
    for _ in range(40):
        if c.goaway is not None or c.closed:
            break
        before = len(acks())
        try:
            c.sock.sendall(ping * 1000)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1000
        c.pump(lambda: len(acks()) > before or c.goaway is not None or c.closed)  # noqa: B023
    c.pump(lambda: c.goaway is not None, timeout=10)
    assert c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # The server answered the allowed 10,000, then stopped reading: no ack after
    # its GOAWAY, and it hung up, though more pings were on their way.
    c.pump(lambda: c.closed)
    goaway_at = next(i for i, (kind, *_) in enumerate(c.raw_frames) if kind == 0x7)
    assert len(acks()) == 10_000 < sent
    assert acks()[-1] < goaway_at
    fresh = h2proxy()
    sid = fresh.request("/after")
    fresh.pump(lambda: sid in fresh.ended)
    assert fresh.headers[sid][":status"] == "200"


def test_pings_below_the_flood_limit_are_all_answered(h2proxy):
    c = h2proxy()
    c.pump(lambda: c.settings_acked)
    for i in range(2000):
        c.conn.ping(struct.pack(">Q", i))
    c.flush()
    c.pump(lambda: len(c.pings) == 2000, timeout=10)
    sid = c.request("/after")
    c.pump(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "200"


def nghttp() -> str:
    return require_tool("nghttp", "nghttp2-client")


def test_a_client_with_no_header_table_can_read_the_answers(h2proxy):
    # nghttp2 wants a table size update once its table shrinks below 4096.
    tool = nghttp()
    c = h2proxy()
    host, port = c.sock.getpeername()
    out = subprocess.run(
        [tool, "-s", "--header-table-size=0", f"http://{host}:{port}/a", f"http://{host}:{port}/b"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # -s prints the bodies, then a row per request: id, times, status code, size, path.
    bodies = {f"hello from web-1 (zone-a) path=/{x}" for x in "ab"}
    assert bodies <= set(out.stdout.splitlines()), out.stdout
    rows = re.findall(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+(\d+)\s+(/\S*)$", out.stdout, re.M)
    assert sorted(rows) == [("200", "34", "/a"), ("200", "34", "/b")], out.stdout


def test_padded_upload_larger_than_the_stream_window(h2proxy):
    c = h2proxy()
    size = 2_500_000
    sid = c.request("/count", method="POST", end=False)
    c.send_body(sid, size, chunk=1000, pad=255)
    c.pump(lambda: sid in c.ended, timeout=20)
    assert c.data[sid] == str(size).encode()


def test_stream_ids_must_increase(h2proxy):
    c = h2proxy()
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 200)
    block = bytes([0x82, 0x86, 0x84, 0x01, 0x03]) + b"web"  # GET http / with :authority web
    c.send_raw(0x1, 0x5, 5, block)
    c.send_raw(0x1, 0x5, 3, block)
    c.pump(lambda: c.goaway is not None)
    assert c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR


def test_cookie_crumbs_are_joined_for_the_upstream(h2proxy):
    c = h2proxy()
    sid = c.request("/headers", extra=[("cookie", "a=1"), ("cookie", "b=2")])
    c.pump(lambda: sid in c.ended)
    assert b'"cookie": "a=1; b=2"' in bytes(c.data[sid])


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_drain_answers_in_flight_streams_and_names_the_last_one(upstream, proxy):
    # nghttp: the Python h2 client takes any GOAWAY as the end of the connection.
    tool = nghttp()
    release = threading.Event()
    u = upstream(lambda *_: OK if release.wait(10) else None)
    p = proxy(one_service([u.addr], listener_protocol="http2"))
    addr = p.addresses["outbound"]
    client = subprocess.Popen(
        [tool, "-v", "-s", f"http://{addr[0]}:{addr[1]}/held"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopper = threading.Thread(target=p.stop, kwargs={"grace": 10})
    try:
        # The drain starts while the request is held at the upstream, and the
        # upstream answers only once the proxy has stopped accepting.
        wait_until(lambda: len(u.heads) == 1, what="the request to reach the upstream")
        stopper.start()
        wait_until(lambda: refuses_connections(addr), what="the proxy to stop accepting")
        release.set()
        out, err = client.communicate(timeout=20)
    finally:
        release.set()
        client.kill()
        stopper.join(15)
    assert client.returncode == 0, out + err
    assert re.search(r":status: 200", out), out
    goaways = re.findall(r"recv GOAWAY.*\n.*last_stream_id=(\d+), error_code=NO_ERROR", out)
    # The request's stream: nghttp may open priority streams first, so its number varies by version.
    request_stream = re.findall(r"send HEADERS frame <[^>]*stream_id=(\d+)>", out)
    assert len(request_stream) == 1, out
    # First "stop opening streams", then, after a PING round trip, the last one served.
    assert goaways == [str(2**31 - 1), request_stream[0]], out


def test_repeated_settings_do_not_strand_a_stream_waiting_for_window(h2proxy):
    c = h2proxy(settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.auto_window = False
    sid = c.request("/bytes/200000")
    c.pump(lambda: len(c.data.get(sid, b"")) >= 1000)
    # The same window again (a delta of 0) must leave the waiting stream waiting, not lost.
    c.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.flush()
    c.auto_window = True
    c.conn.acknowledge_received_data(1000, sid)
    c.flush()
    c.pump(lambda: sid in c.ended, timeout=10)
    assert len(c.data[sid]) == 200_000


def test_quick_server_answers_do_not_buy_resets(h2proxy):
    c = h2proxy(validate=False)
    bad = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "web"),
        (":path", "/"),
        ("connection", "x"),
    ]

    def reset_after_a_400(sid: int) -> None:
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        # A malformed request between each reset, answered 400 at once; waiting for
        # that answer keeps the streams under the concurrency limit.
        answered = c.conn.get_next_available_stream_id()
        c.conn.send_headers(answered, bad, end_stream=True)
        c.flush()
        c.pump(lambda: answered in c.resets or c.goaway is not None)

    assert open_and_kill(c, reset_after_a_400) == ErrorCodes.ENHANCE_YOUR_CALM


def test_drain_does_not_wait_for_a_ping_the_client_never_answers(upstream, proxy):
    from hpack import Decoder

    u = upstream(lambda *_: OK)
    p = proxy(one_service([u.addr], listener_protocol="http2"))
    c = Client(p.addresses["outbound"])
    try:
        sid = c.request("/")  # then not read until the proxy has stopped: the drain's PING goes unanswered
        wait_until(lambda: len(u.heads) == 1, what="the request to reach the upstream")
        stopper = threading.Thread(target=p.stop, kwargs={"grace": 60})
        stopper.start()
        # Waiting for the PING's answer would hold stop() for the whole 60 s grace.
        stopper.join(30)
        assert not stopper.is_alive(), "stop() waited for the answer to its PING"
        c.pump(lambda: c.closed)
    finally:
        c.close()
    kinds = [kind for kind, _, _, _ in c.raw_frames]
    first_goaway, last_goaway = [i for i, kind in enumerate(kinds) if kind == 0x7]
    # The two-step GOAWAY with the unanswered PING between, naming the stream served...
    assert kinds[first_goaway:].count(0x6) == 1 and kinds.index(0x6, first_goaway) < last_goaway
    last_streams = [int.from_bytes(c.raw_frames[i][3][:4], "big") for i in (first_goaway, last_goaway)]
    assert last_streams == [2**31 - 1, sid]
    # ...which was answered in full before the last one.
    [(at, block)] = [(i, payload) for i, (kind, _, s, payload) in enumerate(c.raw_frames) if kind == 0x1]
    [(end, flags, body)] = [
        (i, f, payload) for i, (kind, f, s, payload) in enumerate(c.raw_frames) if kind == 0x0
    ]
    assert (":status", "200") in Decoder().decode(block)
    assert at < end < last_goaway and flags & 0x1 and body == b"ok"  # END_STREAM
