"""Access logs (#20): JSON and Common Log Format lines written off the request path, per listener
or global; rotation by logrotate; a full disk costs lines (counted), never requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import MESHCORE, OutputLines, closed_port, metric, one_service, require_tool, wait_until
from traffic import Traffic


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def logged(path: Path, n: int) -> list[str]:
    wait_until(lambda: len(lines_of(path)) >= n, what=f"{n} lines in {path}")
    return lines_of(path)


def test_json_lines_for_proxied_requests_and_the_proxys_own_answers(backend, proxy, tmp_path):
    log = tmp_path / "access.log"
    cfg = one_service([backend().addr], route={"name": "api", "path_prefix": "/api"})
    cfg["access_log"] = {"path": str(log)}
    p = proxy(cfg)
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/api/a?x=1"), headers={"host": "web.local"}).status_code == 200
        assert c.get(p.url("outbound", "/nope")).status_code == 404
    first, second = (json.loads(line) for line in logged(log, 2))
    assert list(first)[:4] == ["time", "listener", "client", "method"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert (first["method"], first["path"], first["status"], first["route"]) == (
        "GET",
        "/api/a?x=1",
        200,
        "api",
    )
    assert (first["authority"], first["service"], first["protocol"]) == ("web.local", "web", "HTTP/1.1")
    assert first["endpoint"] == cfg["services"][0]["endpoints"][0]["addr"] and first["bytes"] > 0
    assert (second["path"], second["status"], second["route"], second["endpoint"]) == (
        "/nope",
        404,
        None,
        None,
    )
    assert metric(p.metrics(), "access_log_lines_total") == 2


def test_common_log_format_on_one_listener_and_none_on_the_other(backend, proxy, tmp_path):
    log = tmp_path / "common.log"
    cfg = one_service([backend().addr])
    cfg["listeners"][0]["access_log"] = {"path": "common.log", "format": "common"}
    cfg["listeners"].append({"name": "quiet", "bind": "127.0.0.1:0"})
    cfg["routes"].append({"listener": "quiet", "backends": [{"service": "web"}]})
    (tmp_path / "mesh.yaml").write_text(json.dumps(cfg))  # JSON is YAML: relative paths from here
    p = proxy(str(tmp_path / "mesh.yaml"))
    with httpx.Client() as c:
        assert c.get(p.url("quiet", "/not-logged")).status_code == 200
        assert c.get(p.url("outbound", '/a b"c'), headers={"host": "web.local"}).status_code == 200
    [line] = logged(log, 1)
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /a%20b%22c HTTP/1\.1" 200 \d+',
        line,
    ), line


def test_a_log_moved_away_by_logrotate_goes_on_in_a_new_file(backend, proxy, tmp_path):
    logrotate = require_tool("logrotate", "logrotate")
    log = tmp_path / "access.log"
    cfg = one_service([backend().addr])
    cfg["access_log"] = {"path": str(log)}
    p = proxy(cfg)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  rotate 3\n  create 0640\n  missingok\n}}\n")
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/before")).status_code == 200
        logged(log, 1)
        rotate = [logrotate, "--force", "--state", str(tmp_path / "state"), str(conf)]
        subprocess.run(rotate, check=True, capture_output=True)
        rotated = tmp_path / "access.log.1"
        assert [json.loads(line)["path"] for line in lines_of(rotated)] == ["/before"]
        # The proxy notices within a second that the file at the path is another one; until
        # then its lines still go to the rotated file, and none is lost.
        with Traffic([p.url("outbound", "/after")]) as traffic:
            wait_until(lambda: lines_of(log), what="a line in the new file")
        assert not traffic.errors
    wait_until(
        lambda: len(lines_of(rotated)) + len(lines_of(log)) == traffic.sent + 1, what="every request logged"
    )
    assert all(json.loads(line)["path"] == "/after" for line in lines_of(log))


def test_a_full_disk_costs_log_lines_not_requests(backend, proxy, tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: this test mounts a tmpfs")
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        log = disk / "access.log"
        cfg = one_service([backend().addr], admin=True)
        cfg["access_log"] = {"path": str(log)}
        p = proxy(cfg)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # every block
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
        with Traffic([p.url("outbound", "/x" * 50)]) as traffic:
            wait_until(
                lambda: metric(p.metrics(), "access_log_dropped_total") > 0,
                what="lines dropped on a full disk",
            )
        assert not traffic.errors and set(traffic.statuses) == {200}
        dropped = re.search(r'access_log_dropped_total\{path="[^"]+",reason="write"\} (\d+)', p.metrics())
        assert dropped and int(dropped.group(1)) > 0
        # Room again: lines go on.
        filler.unlink()
        before = len(lines_of(log))
        with httpx.Client() as c:
            assert c.get(p.url("outbound", "/room-again")).status_code == 200
        wait_until(lambda: any("/room-again" in line for line in lines_of(log)[before:]), what="a line after")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_reload_moves_the_log_and_a_bad_path_keeps_the_running_one(backend, proxy, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    cfg = one_service([backend().addr])
    cfg["access_log"] = {"path": str(first)}
    p = proxy(cfg)
    with httpx.Client() as c:
        assert c.get(p.url("outbound", "/one")).status_code == 200
        logged(first, 1)
        with pytest.raises(Exception, match=r"access_log\.path"):
            p.reload({**cfg, "access_log": {"path": str(tmp_path / "missing" / "x.log")}})
        assert c.get(p.url("outbound", "/two")).status_code == 200
        logged(first, 2)
        p.reload({**cfg, "access_log": {"path": str(second)}})
        assert c.get(p.url("outbound", "/three")).status_code == 200
    assert [json.loads(line)["path"] for line in logged(second, 1)] == ["/three"]
    assert len(lines_of(first)) == 2


def test_meshcore_run_logs_to_stdout(backend, tmp_path):
    port = closed_port()
    cfg = one_service([backend().addr])
    cfg["listeners"][0]["bind"] = f"127.0.0.1:{port}"
    cfg["access_log"] = {"path": "stdout", "format": "common"}
    path = tmp_path / "mesh.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([*MESHCORE, "run", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        out = OutputLines(proc.stdout)
        out.wait_for(r"^meshcore: ready")
        assert httpx.get(f"http://127.0.0.1:{port}/from-run").status_code == 200
        out.wait_for(r'"GET /from-run HTTP/1\.1" 200')
    finally:
        proc.terminate()
        proc.wait(20)
