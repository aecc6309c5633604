"""The `meshcore` command: --version, check, run, demo."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

import meshcore
from conftest import MESHCORE, OutputLines, one_service


def test_version():
    out = subprocess.run([*MESHCORE, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"meshcore {meshcore.__version__}"


def test_check_good_and_bad(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "listeners:\n  - {name: out, bind: '127.0.0.1:0', protocol: opaque, service: db}\n"
        "services:\n  - {name: db, endpoints: [{addr: '127.0.0.1:5432'}]}\n"
    )
    r = subprocess.run([*MESHCORE, "check", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("service: db", "service: dbx"))
    r = subprocess.run([*MESHCORE, "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}: listeners[0].service: unknown service 'dbx' (valid: db)" in r.stderr


def test_run_serves_until_sigterm_then_drains(tmp_path, backend):
    import json

    cfg = one_service([backend("web").addr], admin=True)
    path = tmp_path / "mesh.json.yaml"
    path.write_text(json.dumps(cfg))  # JSON is valid YAML
    proc = subprocess.Popen(
        [*MESHCORE, "run", str(path), "--grace", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = OutputLines(proc.stdout)
        out.wait_for("ready")
        listen = re.search(r"listener outbound on (\S+)", "".join(out.lines)).group(1)
        admin = re.search(r"admin on (\S+)", "".join(out.lines)).group(1)
        assert httpx.get(f"http://{listen}/").headers["x-backend"] == "web"
        assert httpx.get(f"{admin}/ready").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "stopped" in out.text()
    finally:
        proc.kill()


def test_run_with_bad_config_exits_1(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[listeners]]\nname = "x"\nbind = "nope"\n')
    r = subprocess.run([*MESHCORE, "run", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "listeners[0].bind" in r.stderr


def test_run_path_leaves_heavy_modules_unloaded():
    # Idle memory is a target (bench/footprint.py): `meshcore run` without plugins or an
    # identity service must not load cryptography (identity commands) or asyncio (plugins).
    code = (
        "import sys, meshcore.cli, meshcore.proxy;"
        "print(sorted(m for m in ('cryptography', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_rejects_a_bad_duration_with_usage_not_traceback():
    r = subprocess.run(
        [*MESHCORE, "bench", "http://127.0.0.1:9/", "--duration", "10x"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "invalid duration value: '10x'" in r.stderr and "Traceback" not in r.stderr
