"""`meshcore bench` as a user runs it (issue 14, defect 9): what it can check is checked before the
run (the URL, the plot's matplotlib and directory), and a run where nothing answered is a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MESHCORE, closed_port
from meshcore import bench


def meshcore_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCORE, "bench", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("127.0.0.1:8080", "did you mean 'http://127.0.0.1:8080'?"),
        ("ftp://127.0.0.1:21/", "needs http:// or https://"),
        ("http:///path", "no host"),
        ("http://127.0.0.1:0/", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:99999/", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:http/", "port must be a number from 1 to 65535"),
        ("http://user:secret@127.0.0.1:8080/", "credentials"),
        ("http://127.0.0.1:8080/a b", "percent-encode"),
    ],
)
def test_a_url_bench_cannot_use_is_refused_before_the_run(url: str, reason: str):
    r = meshcore_bench(url, "--duration", "1s")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"meshcore bench: error: invalid URL {url!r}" in r.stderr and reason in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""  # no result: nothing was run


def test_the_python_api_refuses_the_same_urls():
    with pytest.raises(ValueError, match="did you mean 'http://localhost:8080'"):
        bench.run("localhost:8080", duration=0.1)


def test_a_host_that_does_not_resolve_is_refused_before_the_run():
    r = meshcore_bench("http://no-such-host.invalid/", "--duration", "1s")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot resolve 'no-such-host.invalid'" in r.stderr and r.stdout == ""


def test_a_run_where_every_request_failed_exits_non_zero():
    url = f"http://127.0.0.1:{closed_port()}/"
    r = meshcore_bench(url, "--rate", "20", "--duration", "1s", "--json")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "every request failed (connect: " in r.stderr and url in r.stderr, r.stderr
    # The result is still printed, so a script can see what went wrong.
    result = json.loads(r.stdout)
    assert result["requests"] == 0 and result["errors"]["connect"] > 0


def test_a_run_that_got_answers_exits_zero(backend):
    b = backend()
    r = meshcore_bench(f"http://{b.addr}/", "--rate", "20", "--duration", "1s", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requests"] == b.requests > 0


def blocked_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import matplotlib` fails, as where it is not installed."""
    site = tmp_path / "no-matplotlib"
    (site / "matplotlib").mkdir(parents=True)
    (site / "matplotlib" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'matplotlib' (blocked for this test)\")\n"
    )
    path = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import matplotlib"], capture_output=True, text=True, env=env
    )
    assert probe.returncode != 0 and "blocked for this test" in probe.stderr
    return env


def test_plot_without_matplotlib_fails_before_the_run_and_names_the_extra(tmp_path: Path, backend):
    b = backend()
    png = tmp_path / "latency.png"
    r = meshcore_bench(
        f"http://{b.addr}/",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--plot",
        str(png),
        env=blocked_matplotlib(tmp_path),
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "matplotlib" in r.stderr and "pip install 'meshcore[plot]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == "" and b.requests == 0  # refused before any load was sent
    assert not png.exists()


def test_plot_into_a_missing_directory_fails_before_the_run(tmp_path: Path, backend):
    b = backend()
    png = tmp_path / "no-such-dir" / "latency.png"
    r = meshcore_bench(f"http://{b.addr}/", "--rate", "20", "--duration", "1s", "--plot", str(png))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == "" and b.requests == 0


def test_plot_writes_a_png(tmp_path: Path, backend):
    # matplotlib comes with the test extra; this is the path the checks above must not block.
    b = backend()
    png = tmp_path / "latency.png"
    r = meshcore_bench(f"http://{b.addr}/", "--rate", "20", "--duration", "1s", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
