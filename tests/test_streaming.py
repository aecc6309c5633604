"""Bodies stream through the proxy: 50 MB each way without the proxy holding them."""

from __future__ import annotations

import httpx

from conftest import one_service

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_50mb_upload_and_download_stream(backend, proxy):
    # The proxy runs inside this process, so this process's RSS is what to watch.
    p = proxy(one_service([backend().addr]))
    block = b"u" * CHUNK
    with httpx.Client(timeout=60) as client:
        client.get(p.url("outbound", "/warm"))
        before = rss_bytes()

        def upload():
            for _ in range(SIZE // CHUNK):
                yield block

        r = client.post(p.url("outbound", "/count"), content=upload())
        assert r.status_code == 200
        assert int(r.text) == SIZE

        received = 0
        with client.stream("GET", p.url("outbound", f"/bytes/{SIZE}")) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw(CHUNK):
                received += len(chunk)
        assert received == SIZE
        growth = rss_bytes() - before
    assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB moving 2 x 50 MiB"


def test_echo_streams_large_body_over_h2(backend, proxy):
    p = proxy(one_service([backend().addr], protocol="http1"))
    body = bytes(range(256)) * 20_000  # ~5 MB
    with httpx.Client(http1=False, http2=True, timeout=60) as c:
        r = c.post(p.url("outbound", "/echo"), content=body)
    assert r.content == body
