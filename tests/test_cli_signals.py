"""`meshcore run` and signals, with a real process: SIGHUP reloads the config (a refused one
changes nothing and is logged), the process keeps serving, SIGTERM drains."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import httpx

from conftest import MESHCORE, OutputLines, one_service, wait_until


def test_sighup_reloads_the_config_and_sigterm_drains(tmp_path, backend):
    path = tmp_path / "mesh.json.yaml"
    web, api = backend("web"), backend("api")
    path.write_text(json.dumps(one_service([web.addr])))  # JSON is valid YAML
    proc = subprocess.Popen(
        [*MESHCORE, "run", str(path), "--grace", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = OutputLines(proc.stdout), OutputLines(proc.stderr)
        listen = re.search(r"listener outbound on (\S+)", out.wait_for("listener outbound on")).group(1)
        out.wait_for("ready")
        assert httpx.get(f"http://{listen}/").headers["x-backend"] == "web"

        path.write_text(json.dumps(one_service([api.addr])))
        proc.send_signal(signal.SIGHUP)
        err.wait_for(r"meshcore: config v2 applied \(signal, signal\)")
        assert httpx.get(f"http://{listen}/").headers["x-backend"] == "api"

        path.write_text(json.dumps(one_service([web.addr], protocol="gopher")))
        proc.send_signal(signal.SIGHUP)
        refused = err.wait_for(r"meshcore: config refused \(signal, signal\)")
        assert "ConfigError: invalid config" in refused
        wait_until(lambda: any("services[0].protocol" in line for line in err.lines), what="the reason")
        assert proc.poll() is None
        assert httpx.get(f"http://{listen}/").headers["x-backend"] == "api"  # nothing changed

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "meshcore: draining" in out.text() and "meshcore: stopped" in out.text()
    finally:
        proc.kill()
        proc.wait()
