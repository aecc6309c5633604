"""The dashboard (#20): /ui in headless Chromium with real traffic flowing through a real proxy
(the rates appear, the charts draw, a tripped endpoint shows as tripped, the console stays
clean), and its feeds without a browser: /ui/snapshot, /ui/events and their bounds, and the
page's Content-Security-Policy.

Set MESHCORE_DASHBOARD_SCREENSHOT=PATH to also save the browser test's screenshot there, after
a minute of history (docs/dashboard.png is made that way)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from conftest import require_tool, wait_until
from meshcore.admin.dashboard import MAX_STREAMS
from traffic import Traffic

SCREENSHOT_ENV = "MESHCORE_DASHBOARD_SCREENSHOT"


def mesh_config(web: list[str], search: list[tuple[str, str]]) -> dict[str, Any]:
    """Routes "search" (/search) and "web" (the rest); service web's endpoints in zone-a, with a
    quick breaker, and service search's across zone-a and zone-b (its cross-zone share)."""
    return {
        "zone": "zone-a",
        "admin": "127.0.0.1:0",
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0"}],
        "routes": [
            {
                "name": "search",
                "listener": "outbound",
                "path_prefix": "/search",
                "backends": [{"service": "search"}],
            },  # noqa: E501
            {"name": "web", "listener": "outbound", "backends": [{"service": "web"}]},
        ],
        "services": [
            {
                "name": "web",
                "endpoints": [{"addr": a, "zone": "zone-a"} for a in web],
                "breaker": {"consecutive_failures": 3, "min_penalty": "60s", "max_penalty": "60s"},
            },
            {
                "name": "search",
                "balancer": "round-robin",
                "endpoints": [{"addr": a, "zone": z} for a, z in search],
            },
        ],
    }


@pytest.fixture
def mesh(backend, proxy):
    """A proxy whose service web has a healthy endpoint and one answering 500, and its admin URL."""
    good, bad = backend("good"), backend("bad")
    bad.set_failing(500)
    near, far = backend("near"), backend("far", zone="zone-b")
    p = proxy(mesh_config([good.addr, bad.addr], [(near.addr, "zone-a"), (far.addr, "zone-b")]))
    host, port = p.admin_address
    return p, f"http://{host}:{port}", bad


def urls(p) -> list[str]:
    return [p.url("outbound", "/"), p.url("outbound", "/search/q")]


def sse_events(stream: httpx.Response) -> Iterator[dict[str, Any]]:
    """The snapshots of a /ui/events stream, as they come."""
    event = None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            assert event == "snapshot", f"data outside a snapshot event: {line[:80]}"
            yield json.loads(line[len("data: ") :])
            event = None


# --- without a browser ---------------------------------------------------------------------


def test_snapshot_has_stats_endpoints_identity_and_config(mesh):
    p, admin, _ = mesh
    with httpx.Client(timeout=10) as client:
        for url in urls(p):
            client.get(url)
        r = client.get(f"{admin}/ui/snapshot")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    snap = r.json()
    assert set(snap) == {"time", "running", "stats", "endpoints", "identity", "config"}
    assert snap["running"] is True and snap["time"] > 0
    assert set(snap["stats"]["routes"]) == {"web", "search"}
    assert set(snap["stats"]["services"]) == {"web", "search"}
    assert snap["stats"]["routes"]["search"]["responses"] == 1
    assert len(snap["stats"]["buckets_ms"]) == len(snap["stats"]["routes"]["web"]["buckets"])
    assert [s["name"] for s in snap["endpoints"]["services"]] == ["web", "search"]
    assert snap["identity"] is None, "no workload certificate in this config"
    assert snap["config"] is None, "no lifecycle: a proxy started from Python"


def test_events_deliver_snapshots_with_increasing_times(mesh):
    p, admin, _ = mesh
    with httpx.Client(timeout=30) as client, Traffic(urls(p)):
        with client.stream("GET", f"{admin}/ui/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "text/event-stream"
            assert stream.headers["cache-control"] == "no-store"
            got = []
            for snap in sse_events(stream):
                got.append(snap)
                if len(got) == 3:
                    break
    times = [s["time"] for s in got]
    assert times == sorted(times) and len(set(times)) == 3, times
    served = [s["stats"]["services"].get("web", {}).get("responses", 0) for s in got]
    assert served == sorted(served), "counts are cumulative"


def test_the_ninth_stream_is_refused_until_one_closes(mesh):
    _, admin, _ = mesh
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=20)) as client, ExitStack() as streams:
        opened = []
        for _ in range(MAX_STREAMS):
            stream = streams.enter_context(client.stream("GET", f"{admin}/ui/events"))
            assert stream.status_code == 200
            events = sse_events(stream)  # kept: a dropped iterator closes its connection
            next(events)  # it is open and counted
            opened.append((stream, events))
        refused = client.get(f"{admin}/ui/events")
        assert refused.status_code == 503
        assert f"{MAX_STREAMS} dashboard streams" in refused.text
        # The snapshot and the rest of the admin API still answer.
        assert client.get(f"{admin}/ui/snapshot").status_code == 200
        assert client.get(f"{admin}/ready").status_code == 200
        opened[0][0].close()

        def a_slot_is_free() -> bool:
            with client.stream("GET", f"{admin}/ui/events") as again:
                return again.status_code == 200

        wait_until(a_slot_is_free, what="a closed stream to give its slot back")


def test_a_stream_ends_when_the_proxy_stops(mesh):
    p, admin, _ = mesh
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"{admin}/ui/events") as stream:
            events = sse_events(stream)
            assert next(events)["running"] is True
            p.stop(grace=0.5)
            # The stream ends, and cleanly: a complete body (httpx raises on a cut-off one).
            list(events)


def test_the_page_and_its_assets_are_served_under_a_strict_csp(mesh):
    _, admin, _ = mesh
    with httpx.Client(timeout=10) as client:
        page = client.get(f"{admin}/ui")
        links = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text))
        assets = links - {"/ui/snapshot", "/ui/events"}  # the page links to its feeds too
        assert sorted(assets) == [
            "/ui/app.js",
            "/ui/favicon.svg",
            "/ui/style.css",
            "/ui/vendor/dygraph.min.css",
            "/ui/vendor/dygraph.min.js",
        ]
        answers = {"/ui": page, **{a: client.get(f"{admin}{a}") for a in assets}}
        license_notice = client.get(f"{admin}/ui/vendor/LICENSE.dygraphs")
        unknown = client.get(f"{admin}/ui/../api.py")
        other = client.get(f"{admin}/ui/index.html.bak")
    for path, r in answers.items():
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp, (path, csp)
        assert r.headers["x-content-type-options"] == "nosniff"
    kinds = {path: r.headers["content-type"].split(";")[0] for path, r in answers.items()}
    assert kinds["/ui"] == "text/html" and kinds["/ui/app.js"] == "text/javascript"
    assert kinds["/ui/style.css"] == "text/css" and kinds["/ui/vendor/dygraph.min.js"] == "text/javascript"
    # No inline script or style: each <script> has a src and no body.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) == []
    assert re.findall(r"<script[^>]*>[^<]+</script>", page.text) == []
    assert "<style" not in page.text and " style=" not in page.text and "javascript:" not in page.text
    assert "MIT" in license_notice.text
    assert unknown.status_code == 404 and other.status_code == 404


def test_the_dashboard_routes_are_in_the_openapi_document(mesh):
    _, admin, _ = mesh
    paths = httpx.get(f"{admin}/openapi.json").json()["paths"]
    for path in ("/ui", "/ui/snapshot", "/ui/events", "/ui/{asset}"):
        assert "get" in paths[path] and paths[path]["get"]["summary"], path


# --- in a browser --------------------------------------------------------------------------

ROUTES_MOVING = """() => {
  const rows = [...document.querySelectorAll('#routes tbody tr')];
  return rows.length === 2 && rows.every(r => parseFloat(r.dataset.rps) > 0);
}"""

# Every sparkline of the routes and services has at least `min` points and has painted pixels,
# and so has the cross-zone chart.
CHARTS_DRAWN = """(min) => {
  const inked = (c) => {
    if (!c.width || !c.height) return false;
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
    return false;
  };
  const painted = (div) => Number(div.dataset.points) >= min
    && [...div.querySelectorAll('canvas')].some(inked);
  const sparks = [...document.querySelectorAll('.golden .spark-chart')];
  const crossZone = document.getElementById('cross-zone-chart');
  return sparks.length === 12 && sparks.every(painted) && painted(crossZone);
}"""


BAD_CONSOLE = ("error",)  # warnings include Chromium's advice on the test's own canvas readback


def wait_for(page: Any, condition: str, problems: list[str], arg: Any = None, seconds: float = 30) -> None:
    """Playwright's wait for a condition in the page; a timeout fails with what went wrong there."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=seconds * 1000)
    except PlaywrightTimeout:
        pytest.fail(f"timed out waiting for {condition}; the page's problems: {problems}")


def test_the_dashboard_shows_live_traffic_and_a_tripped_endpoint(mesh, tmp_path):
    chromium = require_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    p, admin, bad = mesh
    screenshot_to = os.environ.get(SCREENSHOT_ENV)
    problems: list[str] = []
    with Traffic(urls(p), max_seconds=110) as traffic, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: m.type in BAD_CONSOLE and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
            page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
            page.goto(f"{admin}/ui")
            wait_for(page, ROUTES_MOVING, problems)
            tripped = page.locator(f'.endpoint[data-addr="{bad.addr}"][data-state="tripped"] .badge')
            tripped.wait_for(timeout=30_000)
            assert tripped.inner_text() == "tripped"
            wait_for(page, CHARTS_DRAWN, problems, arg=3)
            web = page.locator('#services tr[data-name="web"] td.num').first
            assert float(web.inner_text()) > 0
            # Its neighbour stays active, and the search service's other zone shows as cross-zone.
            others = page.locator('.service-card[data-service="web"] .endpoint[data-state="active"]')
            assert others.count() == 1
            search_cross = page.locator('#routes tr[data-name="search"] td.num').nth(5).inner_text()
            assert search_cross.endswith("%") and float(search_cross.split()[0]) > 0
            assert page.locator("#config-facts").inner_text().startswith("config\nstatic config")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            if screenshot_to:
                wait_for(page, CHARTS_DRAWN, problems, arg=60, seconds=90)
                page.screenshot(path=screenshot_to, full_page=True)
            assert problems == [], "\n".join(sorted(set(problems)))
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert traffic.sent > 0 and not traffic.errors
