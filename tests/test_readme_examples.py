"""The README's mesh examples, run as written: its shell lines and its TOML
files, in a network namespace where the addresses they name exist (root, as
in CI). A README that drifts from the code fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Files (`<!-- file: NAME -->` before a fenced block) and command lists
    (`<!-- run: NAME -->`) from the README."""
    text = README.read_text()
    files, runs = {}, {}
    for kind, name, body in re.findall(r"<!-- (file|run): (\S+) -->\n```\w*\n(.*?)```", text, re.S):
        if kind == "file":
            files[name] = body
        else:
            runs[name] = [line for line in body.splitlines() if line.strip()]
    return files, runs


def test_identity_and_policy_example(namespace, tmp_path):
    files, runs = readme_blocks()
    for name in ("api.toml", "web.toml"):
        (tmp_path / name).write_text(files[name])
    ns = namespace(["10.0.0.7"])
    for line in runs["setup"]:
        ns.shell(line, tmp_path)
    answers = [ns.shell(line, tmp_path) for line in runs["calls"]]
    # Two proxies started, then the two calls: the HTTP/1.1 app answered
    # across the mTLS hop, and the policy kept web out of /admin.
    assert answers[2] == "hello from api (unknown) path=/api/hello\n"
    assert answers[3] == "403\n"


def test_zonal_breaker_example(namespace, tmp_path):
    files, _ = readme_blocks()
    (tmp_path / "zonal.toml").write_text(files["zonal.toml"])
    ns = namespace(["10.0.0.1", "10.1.0.1"])
    ns.shell("python -m meshcore.backend 10.0.0.1:80 --name local --zone zone-a --fail 500 &", tmp_path)
    ns.shell("python -m meshcore.backend 10.1.0.1:80 --name west --zone zone-a &", tmp_path)
    ns.shell("meshcore run zonal.toml &", tmp_path)
    curl = "curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:4140/"
    codes = [ns.shell(curl, tmp_path).strip() for _ in range(20)]
    assert codes == ["200"] * 20, "each 500 is retried on the next tier"
    eps = json.loads(ns.shell("curl -s http://127.0.0.1:9990/endpoints", tmp_path))
    states = {e["addr"]: e["state"] for e in eps["services"][0]["endpoints"]}
    assert states == {"10.0.0.1:80": "tripped", "10.1.0.1:80": "active"}
