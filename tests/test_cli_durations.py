"""Durations on the command line take what the config takes: '10s', '300ms', or bare seconds."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from conftest import MESHCORE
from meshcore.cli import build_parser
from meshcore.identity import cert_info


@pytest.mark.parametrize(
    "value, expected",
    [("5", timedelta(seconds=5)), ("1.5", timedelta(seconds=1.5)), ("5s", timedelta(seconds=5))],
)
def test_bench_duration_takes_bare_seconds(value, expected):
    args = build_parser().parse_args(["bench", "http://127.0.0.1:9/", "--duration", value])
    assert args.duration == expected


def test_identity_ttl_takes_bare_seconds(tmp_path):
    def identity(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*MESHCORE, "identity", *map(str, args)], capture_output=True, text=True, timeout=60
        )

    r = identity("init", tmp_path / "ca", "--ttl", "3600")
    assert r.returncode == 0, r.stderr
    r = identity(
        "issue", tmp_path / "ca", "--name", "ns/default/sa/web", "--ttl", "10", "--out", tmp_path / "web"
    )
    assert r.returncode == 0, r.stderr
    info = cert_info((tmp_path / "web.crt").read_bytes())
    # Valid from a minute back (clock skew) for the 10 seconds asked.
    assert info["not_after"] - info["not_before"] == timedelta(minutes=1, seconds=10)


@pytest.mark.parametrize("value", ["-5", "soon", "inf"])
def test_a_bad_duration_still_gets_argparse_usage(value):
    r = subprocess.run(
        [*MESHCORE, "identity", "issue", "ca", "--name", "ns/default/sa/web", "--out", "x", "--ttl", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"argument --ttl: invalid duration value: '{value}'" in r.stderr
    assert "Traceback" not in r.stderr
