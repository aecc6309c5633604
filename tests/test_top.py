"""Top (#20): `meshcore top ADMIN`, a live table of a proxy's routes and services from its admin
API's /stats, driven in a pseudo-terminal with real traffic flowing: rates over the last interval,
sorted by keys, the terminal given back as it was; `--once` (and `--json`) for scripts."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import httpx
import pytest

from conftest import MESHCORE, closed_port, one_service, wait_until
from meshcore.views.golden import golden_rows, sort_rows
from traffic import Traffic

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]")
# rich's live screen starts each frame at the top left.
HOME = "\x1b[H"


@pytest.fixture
def routes(backend, proxy):
    """Routes r-alpha (/a), r-zulu (/z) and r-flaky (the rest), all to service web. /stats lists a
    route once it has answered."""
    b = backend()
    cfg = one_service([b.addr], admin=True, route={"name": "r-zulu", "path_prefix": "/z"})
    cfg["routes"].insert(
        0, {"name": "r-alpha", "listener": "outbound", "path_prefix": "/a", "backends": [{"service": "web"}]}
    )
    cfg["routes"].append({"name": "r-flaky", "listener": "outbound", "backends": [{"service": "web"}]})
    p = proxy(cfg)
    host, port = p.admin_address
    return p, f"{host}:{port}"


class Terminal:
    """A command with a pseudo-terminal of 120x40 as its stdin and stdout; what it writes is read
    on a thread. The test keeps the terminal's other end open, to read its settings after exit."""

    def __init__(self, cmd: list[str]) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.settings_before = termios.tcgetattr(self.slave)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        for name in ("NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            cmd, stdin=self.slave, stdout=self.slave, stderr=subprocess.PIPE, env=env, text=True
        )
        self.raw = ""
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:
                    return

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def screen(self) -> list[str]:
        """The latest whole frame, as plain lines (one with the footer, which comes last)."""
        frames = [ANSI.sub("", f) for f in self.raw.split(HOME)]
        for frame in reversed(frames):
            if "keys:" in frame:
                return frame.splitlines()
        return []

    def wait_for_screen(self, check, what: str) -> list[str]:  # type: ignore[no-untyped-def]
        seen: list[list[str]] = [[]]

        def shown() -> bool:
            seen[0] = self.screen()
            return bool(check(seen[0]))

        try:
            wait_until(shown, timeout=20, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n" + "\n".join(seen[0])) from None
        return seen[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._done.set()
        self._reader.join(10)
        os.close(self.master)
        os.close(self.slave)


def rows(screen: list[str], prefix: str = "r-") -> list[list[str]]:
    """The table rows whose name starts with `prefix`, as cells, in screen order."""
    found = []
    for line in screen:
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1].startswith(prefix):
            found.append(cells[1:-1])
    return found


def names(screen: list[str]) -> list[str]:
    return [r[0] for r in rows(screen)]


def live_rates(screen: list[str], *wanted: str) -> bool:
    shown = {r[0]: r[1] for r in rows(screen)}
    return all(shown.get(name, "-") != "-" and float(shown[name]) > 0 for name in wanted)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def open_(cmd: list[str]) -> Terminal:
        t = Terminal(cmd)
        opened.append(t)
        return t

    yield open_
    for t in opened:
        t.close()


def test_top_shows_live_rates_sorts_by_keys_and_gives_the_terminal_back(routes, terminal):
    p, admin = routes
    assert httpx.get(p.url("outbound", "/once")).status_code == 200  # r-flaky: listed, then idle
    # r-zulu gets three requests for each of r-alpha's; r-flaky none.
    urls = [p.url("outbound", path) for path in ("/z/1", "/z/2", "/z/3", "/a/1")]
    with Traffic(urls) as traffic:
        term = terminal([*MESHCORE, "top", admin])
        screen = term.wait_for_screen(
            lambda s: live_rates(s, "r-alpha", "r-zulu"), "both routes with a non-zero req/s"
        )
        assert termios.tcgetattr(term.slave)[3] & termios.ICANON == 0, "keys are read in cbreak mode"
        assert names(screen) == ["r-zulu", "r-alpha", "r-flaky"], "busiest first; no traffic last"
        flaky = rows(screen)[2]
        assert flaky[1:6] == ["-"] * 5, f"no traffic in the interval is no rate: {flaky}"
        assert any("r req/s" in line and "q quit" in line for line in screen), "the footer names the keys"
        assert "web" in [r[0] for r in rows(screen, "web")], "the services' table"

        term.press("n")
        screen = term.wait_for_screen(lambda s: any("sorted by name" in line for line in s), "sorted by name")
        assert names(screen) == ["r-alpha", "r-flaky", "r-zulu"]
        term.press("r")
        screen = term.wait_for_screen(lambda s: any("sorted by req/s" in line for line in s), "by req/s")
        assert names(screen) == ["r-zulu", "r-alpha", "r-flaky"]
        term.press("q")
        assert term.proc.wait(10) == 0, term.proc.stderr.read() if term.proc.stderr else ""
    assert not traffic.errors
    assert termios.tcgetattr(term.slave) == term.settings_before, "the terminal's settings are back"
    term._done.set()
    term._reader.join(10)
    # Out of the alternate screen, with the cursor shown again.
    assert term.raw.rfind("\x1b[?1049l") > term.raw.rfind("\x1b[?1049h") >= 0
    assert term.raw.rfind("\x1b[?25h") > term.raw.rfind("\x1b[?25l") >= 0


def test_top_says_when_the_proxy_is_gone_keeps_asking_and_ctrl_c_restores(routes, proxy, backend, terminal):
    p, admin = routes
    assert httpx.get(p.url("outbound", "/z/1")).status_code == 200
    term = terminal([*MESHCORE, "top", admin, "--interval", "0.2"])
    term.wait_for_screen(lambda s: "r-zulu" in names(s), "the routes")
    p.stop(grace=0.5)
    screen = term.wait_for_screen(
        lambda s: any("routes - disconnected, retrying" in line for line in s), "the admin API shown as gone"
    )
    assert f"disconnected, retrying: cannot reach the admin API at http://{admin}/stats" in screen[0]
    assert "r-zulu" in names(screen), "the last known routes stay"
    assert rows(screen)[0][1:6] == ["-"] * 5, "no rates while the admin API does not answer"
    assert term.proc.poll() is None, "top keeps running"

    # Another proxy at the same admin address: top reads it.
    b = backend()
    cfg = one_service([b.addr], route={"name": "r-other"})
    cfg["admin"] = admin
    second = proxy(cfg)
    with Traffic([second.url("outbound", "/")]):
        term.wait_for_screen(
            lambda s: not any("disconnected" in line for line in s) and live_rates(s, "r-other"),
            "the new proxy's route with traffic",
        )
    term.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert term.proc.wait(10) == 0
    assert termios.tcgetattr(term.slave) == term.settings_before


def test_a_failing_route_shows_its_success_rate_below_100_percent(routes):
    p, admin = routes
    assert httpx.get(p.url("outbound", "/a/once")).status_code == 200  # r-alpha: listed, then idle
    urls = [p.url("outbound", "/status/500"), p.url("outbound", "/fine"), p.url("outbound", "/z/1")]
    with Traffic(urls):
        failed = lambda: p.route_stats()["routes"].get("r-flaky", {}).get("failures")  # noqa: E731
        wait_until(failed, what="a failed request")
        table = subprocess.run(
            [*MESHCORE, "top", admin, "--once", "--interval", "2", "--sort", "success"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        done = subprocess.run(
            [*MESHCORE, "top", admin, "--once", "--json", "--interval", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert table.returncode == 0, table.stderr
    shown = rows(table.stdout.splitlines())
    assert [r[0] for r in shown] == ["r-flaky", "r-zulu", "r-alpha"], "least successful first, idle last"
    flaky_success = float(shown[0][2].rstrip("%"))
    assert 0 < flaky_success < 100 and shown[1][2] == "100.00%", shown

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["admin"], out["sort"]) == (admin, "rps") and out["seconds"] >= 2
    by_name = {r["name"]: r for r in out["routes"]}
    assert set(by_name) == {"r-alpha", "r-zulu", "r-flaky"}
    assert [r["name"] for r in out["services"]] == ["web"]
    flaky, zulu, alpha = by_name["r-flaky"], by_name["r-zulu"], by_name["r-alpha"]
    assert 0 < flaky["success_rate"] < 1 and flaky["failures"] > 0
    assert zulu["success_rate"] == 1.0 and zulu["failures"] == 0
    for r in (flaky, zulu):
        assert r["rps"] > 0 and r["requests"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert alpha == {
        "name": "r-alpha",
        "requests": 1,
        "failures": 0,
        "rps": None,
        "success_rate": None,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
    }
    assert 0 < out["services"][0]["success_rate"] < 1


def test_top_without_an_admin_api_or_with_bad_options_says_so(terminal):
    admin = f"127.0.0.1:{closed_port()}"
    term = terminal([*MESHCORE, "top", admin])
    assert term.proc.wait(30) == 1
    assert term.proc.stderr is not None
    errors = [term.proc.stderr.read()]
    assert "\x1b[?1049h" not in term.raw, "no screen for an admin API that is not there"
    assert termios.tcgetattr(term.slave) == term.settings_before
    for extra in (["--once"], ["--once", "--json"]):
        done = subprocess.run([*MESHCORE, "top", admin, *extra], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and done.stdout == "", (extra, done.stdout, done.stderr)
        errors.append(done.stderr)
    for error in errors:
        lines = error.splitlines()
        assert len(lines) == 1 and "cannot reach the admin API" in lines[0] and admin in lines[0], lines
    for extra, message in (
        (["--json"], "needs --once"),
        ([], "needs a terminal"),  # stdout is a pipe here
        (["--interval", "0"], "seconds between"),
        (["--sort", "cpu"], "invalid choice"),
        (["--once", "--token-file", "/nonexistent/tokens"], "--token-file: cannot read"),
    ):
        done = subprocess.run(
            [*MESHCORE, "top", "127.0.0.1:1", *extra], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)


class Refusing(BaseHTTPRequestHandler):
    """An admin API in front of which something wants a token it does not get: 401, and the
    Authorization headers it was sent."""

    seen: list[Optional[str]] = []

    def do_GET(self) -> None:  # noqa: N802
        Refusing.seen.append(self.headers.get("authorization"))
        self.send_response(401, "Unauthorized")
        self.send_header("content-length", "20")
        self.end_headers()
        self.wfile.write(b"invalid admin token\n")

    def log_message(self, *args: object) -> None:
        pass


def test_top_sends_its_token_file_token_and_says_what_the_admin_api_answered(routes, tmp_path):
    p, admin = routes
    tokens = tmp_path / "admin.tokens"
    tokens.write_text("ops ops-0123456789abcdef\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refusing = f"127.0.0.1:{server.server_address[1]}"
        cmd = [*MESHCORE, "top", refusing, "--once", "--token-file", str(tokens)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert Refusing.seen == ["Bearer ops-0123456789abcdef"]
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"meshcore top: http://{refusing}/stats: 401 Unauthorized: invalid admin token\n"
    # Not an admin API's /stats: said so, not a traceback.
    done = subprocess.run([*MESHCORE, "top", f"http://{admin}/x", "--once"], capture_output=True, text=True)
    assert done.returncode == 1 and f"http://{admin}/x/stats: 404 Not Found" in done.stderr, done.stderr
    bare = p.url("outbound", "/")  # the backend's text, not JSON
    done = subprocess.run([*MESHCORE, "top", bare, "--once"], capture_output=True, text=True)
    assert done.returncode == 1 and "did not answer with a proxy's stats" in done.stderr, done.stderr


def test_rates_are_over_the_interval_and_counts_going_back_are_no_rate():
    bounds = [1, 10]
    then = {
        "buckets_ms": bounds,
        "routes": {"a": {"responses": 10, "failures": 0, "buckets": [10, 0]}},
        "services": {},
    }
    now = {
        "buckets_ms": bounds,
        "routes": {
            "a": {"responses": 30, "failures": 5, "buckets": [10, 10]},
            "new": {"responses": 4, "failures": 0, "buckets": [4, 0]},  # added by a reload: from zero
        },
        "services": {},
    }
    rows = {r.name: r for r in golden_rows(now, then, 2.0)["routes"]}
    assert (rows["a"].rps, rows["a"].success_rate, rows["a"].requests) == (10.0, 0.75, 30)
    assert rows["a"].p50_ms == 5.5 and rows["new"].rps == 2.0
    restarted = {**now, "routes": {"a": {"responses": 3, "failures": 0, "buckets": [3, 0]}}}
    (again,) = golden_rows(restarted, now, 1.0)["routes"]
    assert (again.rps, again.success_rate, again.p99_ms, again.requests) == (None, None, None, 3)
    assert [r.name for r in sort_rows(list(rows.values()), "rps")] == ["a", "new"]
    assert [r.name for r in sort_rows([again, *rows.values()], "success")] == ["a", "new", "a"]
    assert [r.name for r in sort_rows([again, *rows.values()], "p99")] == ["a", "new", "a"]
    assert [r.p99_ms for r in sort_rows([again, *rows.values()], "p99")] == [9.91, 0.99, None]
