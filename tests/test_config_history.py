"""Config history on disk (#17): versions survive a new History over the same state_dir,
numbering continues, each write is atomic, the newest LIMIT are kept, bad versions are skipped
by rollback; and the diff of two versions shows the changed field."""

from __future__ import annotations

import json
import os

import pytest

from meshcore.lifecycle.diff import render_diff
from meshcore.lifecycle.history import History


def record(h: History, n: int, **kw):
    return h.record(
        text=f"# config {n}\n", fmt="toml", hash=f"sha256:{n:064x}", source="file", who="ops", **kw
    )


def test_versions_persist_across_a_new_history_and_numbering_continues(tmp_path):
    h = History(tmp_path / "state")
    first, second = record(h, 1), record(h, 2)
    assert (first.version, second.version) == (1, 2)
    again = History(tmp_path / "state")
    assert [v.summary() for v in again.versions()] == [first.summary(), second.summary()]
    assert again.get(2).text == "# config 2\n"
    assert (tmp_path / "state" / "configs" / "2.toml").read_text() == "# config 2\n"
    assert record(again, 3).version == 3
    index = json.loads((tmp_path / "state" / "history.json").read_text())
    assert [v["version"] for v in index["versions"]] == [1, 2, 3] and index["next"] == 4


def test_with_a_state_dir_the_texts_stay_on_disk(tmp_path):
    # A mesh's config is megabytes and 100 versions are kept: not in the proxy's memory.
    h = History(tmp_path / "state")
    record(h, 1), record(h, 2)
    assert [v.text for v in h.versions()] == ["", ""]
    assert h.get(1).text == "# config 1\n"
    assert [v.text for v in h.versions()] == ["", ""]  # read for the caller, not kept
    in_memory = History(None)
    record(in_memory, 1)
    assert in_memory.get(1).text == "# config 1\n"


def test_only_the_newest_are_kept_and_numbers_are_never_reused(tmp_path):
    h = History(tmp_path, limit=3)
    for n in range(1, 6):
        record(h, n)
    assert [v.version for v in h.versions()] == [3, 4, 5]
    assert h.get(1) is None
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == ["3.toml", "4.toml", "5.toml"]
    assert record(History(tmp_path, limit=3), 6).version == 6


def test_a_write_leaves_no_temporary_file_and_replaces_the_index_whole(tmp_path):
    h = History(tmp_path)
    before = os.stat(tmp_path / "history.json") if (tmp_path / "history.json").exists() else None
    record(h, 1)
    inode = os.stat(tmp_path / "history.json").st_ino
    record(h, 2)
    # A rename, not a rewrite in place: a reader sees the old index or the new one.
    assert before is None and os.stat(tmp_path / "history.json").st_ino != inode
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_bad_mark_persists_and_rollback_skips_bad_and_identical_versions(tmp_path):
    h = History(tmp_path)
    record(h, 1)
    record(h, 2)
    record(h, 3)
    h.mark_bad(2, "verify-success-rate")
    assert History(tmp_path).get(2).bad == "verify-success-rate"
    assert h.rollback_target(3).version == 1
    same = h.record(text="# config 1\n", fmt="toml", hash=f"sha256:{1:064x}", source="api", who="ops")
    assert h.rollback_target(same.version).version == 3
    with pytest.raises(KeyError):
        h.mark_bad(99, "x")


def test_an_unreadable_index_is_kept_aside_and_numbering_goes_on(tmp_path, capsys):
    h = History(tmp_path)
    record(h, 1)
    record(h, 2)
    (tmp_path / "history.json").write_text("{ not json")
    again = History(tmp_path)
    assert again.versions() == [] and record(again, 3).version == 3
    assert [p for p in tmp_path.iterdir() if p.name.startswith("history.json.unreadable-")]
    assert "unreadable history index" in capsys.readouterr().err


def test_in_memory_history_writes_nothing(tmp_path):
    h = History(None)
    assert record(h, 1).version == 1 and h.get(1).text == "# config 1\n"
    assert list(tmp_path.iterdir()) == []


def test_a_state_dir_that_cannot_be_created_is_an_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match=r"state_dir: cannot create .*file/state"):
        History(tmp_path / "file" / "state")


def version(n: int, config: dict, hash: str) -> dict:
    return {"version": n, "hash": hash, "applied_at": 0.0, "source": "api", "who": "ops", "config": config}


def test_the_diff_shows_the_changed_field_and_names_the_versions():
    a = version(1, {"routes": [{"timeout": "10s", "listener": "out"}], "zone": "a"}, "sha256:" + "a" * 64)
    b = version(4, {"zone": "a", "routes": [{"listener": "out", "timeout": "2s"}]}, "sha256:" + "b" * 64)
    text = render_diff(a, b)
    assert text.startswith("--- version 1 (sha256:aaaaaaaaaaaa, api by ops")
    assert "+++ version 4 (sha256:bbbbbbbbbbbb" in text
    changed = [line for line in text.splitlines() if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert changed == ['-      "timeout": "10s"', '+      "timeout": "2s"']
    assert render_diff(a, version(2, a["config"], a["hash"])).startswith(
        "versions 1 and 2 have the same config"
    )
