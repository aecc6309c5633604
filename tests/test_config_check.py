"""`meshcore check` and config loading: what `run` would refuse, check refuses first,
with the file, the field and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshcore import ConfigError, Proxy
from meshcore.config import load

MESHCORE = [sys.executable, "-m", "meshcore.cli"]

SERVICE = """
[[services]]
name = "web"
endpoints = [{ addr = "127.0.0.1:8081" }]
"""


def listener(name: str, bind: str) -> str:
    return f'[[listeners]]\nname = "{name}"\nbind = "{bind}"\n\n'


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCORE, "check", str(path)], capture_output=True, text=True, timeout=60)


def refused(path: Path, field: str, reason: str) -> None:
    """`check` exits 1 naming the file, the field and the reason."""
    r = check(path)
    assert r.returncode == 1, r.stdout
    assert f"{path}: {field}: " in r.stderr, r.stderr
    assert reason in r.stderr, r.stderr


@pytest.mark.parametrize(
    "first, second",
    [
        ("127.0.0.1:4140", "127.0.0.1:4140"),
        ("0.0.0.0:4140", "127.0.0.1:4140"),
        ("127.0.0.1:4140", "0.0.0.0:4140"),
        ("[::]:4140", "127.0.0.1:4140"),
        ("[::ffff:127.0.0.1]:4140", "127.0.0.1:4140"),
    ],
)
def test_two_listeners_on_one_port_are_refused(tmp_path, first, second):
    path = tmp_path / "mesh.toml"
    path.write_text(listener("outbound", first) + listener("inbound", second) + SERVICE)
    refused(path, "listeners[1].bind", f"takes the port of listeners[0].bind {first} (listener 'outbound')")
    # `run` refuses it before binding anything: the same error from the same check.
    with pytest.raises(ConfigError, match=r"listeners\[1\]\.bind: .*each listener needs its own port"):
        Proxy(path)


@pytest.mark.parametrize(
    "first, second",
    [
        ("127.0.0.1:0", "127.0.0.1:0"),  # each gets its own free port
        ("127.0.0.1:4140", "127.0.0.2:4140"),
        ("127.0.0.1:4140", "127.0.0.1:4141"),
        ("[::1]:4140", "127.0.0.1:4140"),
        ("0.0.0.0:4140", "[::1]:4140"),
    ],
)
def test_listeners_on_distinct_sockets_are_accepted(tmp_path, first, second):
    path = tmp_path / "mesh.toml"
    path.write_text(listener("outbound", first) + listener("inbound", second) + SERVICE)
    r = check(path)
    assert r.returncode == 0, r.stderr
    assert "ok (2 listeners" in r.stdout


def test_the_admin_api_cannot_share_a_listener_port(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text('admin = "127.0.0.1:4140"\n' + listener("outbound", "0.0.0.0:4140") + SERVICE)
    refused(path, "admin", "takes the port of listeners[0].bind 0.0.0.0:4140 (listener 'outbound')")
    ok = tmp_path / "ok.toml"
    ok.write_text('admin = "127.0.0.1:0"\n' + listener("outbound", "127.0.0.1:0") + SERVICE)
    assert load(ok).admin == "127.0.0.1:0"
