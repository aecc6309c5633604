"""`meshcore run` with its config lifecycle (#17), as real processes: history survives a restart,
`meshcore reload`, `config history`, `config diff` and `rollback` drive a running proxy through
its admin API (with an admin token), and `watch = true` reloads on an edit."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import MESHCORE, OutputLines, wait_until

TOKEN = "ops-0123456789abcdef"


def mesh(body: str, *, timeout: str = "10s", extra: str = "") -> str:
    return (
        'admin = "127.0.0.1:0"\nadmin_token_file = "admin.tokens"\n' + extra + "\n"
        '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
        f'[[routes]]\nlistener = "outbound"\ntimeout = "{timeout}"\n'
        'direct_response = { status = 200, body = "' + body + '" }\n'
    )


class Running:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [*MESHCORE, "run", str(path), "--grace", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = OutputLines(self.proc.stdout), OutputLines(self.proc.stderr)
        self.listen = re.search(
            r"listener outbound on (\S+)", self.out.wait_for("listener outbound on")
        ).group(1)
        self.admin = re.search(r"admin on http://(\S+)", self.out.wait_for("admin on")).group(1)
        self.out.wait_for("ready")

    def answer(self) -> str:
        return httpx.get(f"http://{self.listen}/").text

    def status(self) -> dict:
        return httpx.get(f"http://{self.admin}/config/status").json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            assert self.proc.wait(15) == 0
        finally:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def config(tmp_path) -> Iterator[Path]:
    (tmp_path / "admin.tokens").write_text(f"ops {TOKEN}\n")
    path = tmp_path / "mesh.toml"
    path.write_text(mesh("one"))
    yield path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCORE, *args], capture_output=True, text=True, timeout=60)


def test_history_survives_a_restart_and_the_cli_reloads_diffs_and_rolls_back(config, tmp_path):
    run = Running(config)
    try:
        config.write_text(mesh("two", timeout="2s"))
        tokens = str(tmp_path / "admin.tokens")
        done = cli("reload", "--admin", run.admin, "--token-file", tokens)
        assert (done.returncode, done.stdout) == (0, "config version 2 applied (reloaded from the file)\n")
        assert run.answer() == "two"
    finally:
        run.stop()

    run = Running(config)  # same file: no new version, the numbering goes on
    try:
        assert run.status()["version"] == 2
        history = cli("config", "history", "--admin", run.admin)
        assert history.returncode == 0, history.stderr
        lines = history.stdout.splitlines()
        assert lines[0].split() == ["VERSION", "APPLIED", "SOURCE", "WHO", "HASH"]
        assert re.match(r"2\s+\S+ \S+\s+file\s+ops\s+[0-9a-f]{12}\s+running$", lines[1])
        assert re.match(r"1\s+\S+ \S+\s+start\s+start\s+[0-9a-f]{12}$", lines[2])

        diff = cli("config", "diff", "1", "2", "--admin", run.admin)
        assert diff.returncode == 0, diff.stderr
        changed = [
            line for line in diff.stdout.splitlines() if line[:1] in "+-" and line[:3] not in ("---", "+++")
        ]
        assert sorted(changed) == sorted(
            [
                '-        "body": "one",',
                '+        "body": "two",',
                '-      "timeout": "10s"',
                '+      "timeout": "2s"',
            ]
        )
        assert diff.stdout.startswith("--- version 1 (sha256:")

        done = cli("rollback", "--admin", run.admin, "--token-file", str(tmp_path / "admin.tokens"))
        assert (done.returncode, done.stdout) == (0, "config version 3 applied (rollback)\n")
        assert run.answer() == "one"
        done = cli("rollback", "2", "--admin", run.admin)
        assert done.returncode == 0 and run.answer() == "two"
        assert run.status()["version"] == 4

        # Refusals: the server's reason, and a non-zero exit.
        config.write_text(mesh("three").replace('listener = "outbound"\ntimeout', 'listener = "x"\ntimeout'))
        done = cli("reload", "--admin", run.admin)
        assert done.returncode == 1 and "400 Bad Request" in done.stderr
        assert f"{config}: routes[0].listener: unknown listener 'x'" in done.stderr
        assert run.answer() == "two"
        done = cli("rollback", "42", "--admin", run.admin)
        assert done.returncode == 1 and "no version 42 in the history" in done.stderr
        (tmp_path / "wrong.tokens").write_text("ops wrong-token-0123456789\n")
        done = cli("reload", "--admin", run.admin, "--token-file", str(tmp_path / "wrong.tokens"))
        assert done.returncode == 1 and "401" in done.stderr and "invalid admin token" in done.stderr
        done = cli("reload", "--admin", run.admin, "--token-file", str(tmp_path / "nowhere"))
        assert done.returncode == 2 and "--token-file: cannot read" in done.stderr
    finally:
        run.stop()
    assert (tmp_path / "mesh.state" / "history.json").exists()


def test_the_cli_says_when_nothing_answers(config):
    done = cli("config", "history", "--admin", "127.0.0.1:1")
    assert done.returncode == 1 and "cannot reach the admin API at http://127.0.0.1:1" in done.stderr


def test_watch_reloads_on_an_edit_and_retries_after_a_bad_one(config):
    config.write_text(mesh("one", extra="watch = true"))
    run = Running(config)
    try:
        assert run.status()["watch"] is True
        config.write_text(mesh("two", extra="watch = true"))
        wait_until(lambda: run.status()["version"] == 2, 15, "the watcher to apply version 2")
        assert run.answer() == "two" and run.status()["source"] == "watch"
        config.write_text(mesh("three", extra="watch = true")[:-12])  # caught half-written
        wait_until(lambda: (run.status()["last_reload"] or {}).get("result") == "refused", 15, "a refusal")
        assert run.answer() == "two"
        config.write_text(mesh("three", extra="watch = true"))
        wait_until(lambda: run.status()["version"] == 3, 15, "the watcher to retry")
        assert run.answer() == "three"
        # A file the config names counts too: a broken token file is a refused reload.
        (config.parent / "admin.tokens").write_text("ops\n")
        wait_until(
            lambda: "admin_token_file" in (run.status()["last_reload"]["error"] or ""), 15, "a refusal"
        )
        assert run.status()["version"] == 3
    finally:
        run.stop()
