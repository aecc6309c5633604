"""The proxy's own HTTP/2 server, frame by frame: flow control both ways,
pings, CONTINUATION, malformed requests, limits and connection errors,
driven by the `h2` library over a plain socket."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from conftest import one_service
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


def test_response_waits_for_the_clients_window_and_respects_its_frame_size(h2proxy):
    c = h2proxy(settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.auto_window = False
    sid = c.request("/bytes/200000")
    c.pump(lambda: len(c.data.get(sid, b"")) >= 1000)
    time.sleep(0.3)
    c.pump(lambda: True)
    assert len(c.data[sid]) == 1000, "the server sent past the stream window"
    c.auto_window = True
    c.conn.acknowledge_received_data(1000, sid)
    c.flush()
    c.pump(lambda: sid in c.ended, timeout=10)
    assert bytes(c.data[sid]) == b"x" * 200_000
    assert max(c.frames[sid]) <= 16384


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


def test_request_trailers_end_the_body(h2proxy):
    # The trailers end the stream; the HTTP/1.1 test backend does not report them.
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
        time.sleep(0.3)  # the uploads are connecting upstream, each holding its body
        for sid in uploads:
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        after = c.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/after")]
        c.conn.send_headers(after, headers, end_stream=True)
        c.flush()  # one write: the resets and the new request
        c.pump(lambda: after in c.ended, timeout=10)
        assert c.headers[after][":status"] in ("502", "503", "504")
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
    # Well past the 10,000 frames without work allowed per 10 s; the client
    # reads the acks as it goes, so this is a flood while reading.
    for _ in range(40):
        if c.goaway is not None or c.closed:
            break
        try:
            c.sock.sendall(ping * 1000)
        except (BrokenPipeError, ConnectionResetError):
            break
        c.pump(lambda: len(c.pings) >= 1 or c.goaway is not None or c.closed)
        c.pings.clear()
    c.pump(lambda: c.goaway is not None, timeout=10)
    assert c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
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


needs_nghttp = pytest.mark.skipif(
    shutil.which("nghttp") is None,
    reason="nghttp (Debian package nghttp2-client) not installed; .ci/run installs it",
)


@needs_nghttp
def test_a_client_with_no_header_table_can_read_the_answers(h2proxy):
    # nghttp2 wants a table size update once its table shrinks below 4096.
    c = h2proxy()
    host, port = c.sock.getpeername()
    out = subprocess.run(
        ["nghttp", "-s", "--header-table-size=0", f"http://{host}:{port}/a", f"http://{host}:{port}/b"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("200") >= 2, out.stdout


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


@needs_nghttp
def test_drain_answers_in_flight_streams_and_names_the_last_one(backend, proxy):
    # nghttp: the Python h2 client takes any GOAWAY as the end of the connection.
    import re
    import threading

    p = proxy(one_service([backend().addr], listener_protocol="http2"))
    host, port = p.addresses["outbound"]
    stopper = threading.Timer(0.3, p.stop, kwargs={"grace": 5})
    stopper.start()
    out = subprocess.run(
        ["nghttp", "-v", "-s", f"http://{host}:{port}/delay/800"], capture_output=True, text=True, timeout=20
    )
    stopper.join(10)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r":status: 200", out.stdout), out.stdout
    goaways = re.findall(r"recv GOAWAY.*\n.*last_stream_id=(\d+), error_code=NO_ERROR", out.stdout)
    # The request's stream: nghttp may open priority streams first, so its number varies by version.
    request_stream = re.findall(r"send HEADERS frame <[^>]*stream_id=(\d+)>", out.stdout)
    assert len(request_stream) == 1, out.stdout
    # First "stop opening streams", then, after a PING round trip, the last one served.
    assert goaways == [str(2**31 - 1), request_stream[0]], out.stdout


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


def test_drain_does_not_wait_for_a_ping_the_client_never_answers(backend, proxy):
    import threading

    p = proxy(one_service([backend().addr], listener_protocol="http2"))
    c = Client(p.addresses["outbound"])
    try:
        c.request("/delay/300")  # then never read, so the drain's PING goes unanswered
        time.sleep(0.1)
        started = time.monotonic()
        stopper = threading.Thread(target=p.stop, kwargs={"grace": 8})
        stopper.start()
        stopper.join(10)
        took = time.monotonic() - started
    finally:
        c.close()
    assert took < 4, f"stop() waited {took:.1f} s for the PING"
