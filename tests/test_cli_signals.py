"""`meshcore run` and signals, with a real process: SIGHUP does not kill it, SIGTERM drains."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import httpx

from conftest import MESHCORE, OutputLines, one_service, wait_until


def test_sighup_is_logged_and_ignored_then_sigterm_drains(tmp_path, backend):
    path = tmp_path / "mesh.json.yaml"
    path.write_text(json.dumps(one_service([backend("web").addr])))  # JSON is valid YAML
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

        def logged(times: int) -> bool:
            assert proc.poll() is None, f"meshcore run exited with {proc.returncode} on SIGHUP"
            return sum("SIGHUP ignored" in line for line in err.lines) == times

        for sent in (1, 2):  # each one is logged, none is fatal
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda sent=sent: logged(sent), 15, f"SIGHUP number {sent} to be logged on stderr")
        assert "reloading the config by signal is not supported yet" in err.lines[0]
        assert proc.poll() is None
        assert httpx.get(f"http://{listen}/").headers["x-backend"] == "web"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "meshcore: draining" in out.text() and "meshcore: stopped" in out.text()
    finally:
        proc.kill()
        proc.wait()
