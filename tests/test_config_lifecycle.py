"""The lifecycle fields of the config (#17): state_dir, watch, admin_token_file, reload. They are
Python's own: the core never sees them, and `meshcore check` refuses a bad token file by name."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import MESHCORE, one_service
from meshcore import ConfigError
from meshcore.config import load
from meshcore.tokens import TokenFileError, match_token, parse_tokens

BASE = '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n'
TOKEN = "0123456789abcdef0123"


def test_the_core_is_not_sent_the_lifecycle_fields(tmp_path):
    (tmp_path / "admin.tokens").write_text(f"ops {TOKEN}\n")
    cfg = one_service(["127.0.0.1:8081"])
    cfg.update(
        state_dir="state",
        watch=True,
        admin_token_file=str(tmp_path / "admin.tokens"),
        reload={"verify": "30s"},
    )
    config = load(cfg)
    assert config.reload is not None and config.reload.min_success_rate == 0.99
    assert config.reload.max_p99_ratio == 1.5 and config.reload.min_requests == 20
    document = config.to_core()
    for field in ("state_dir", "watch", "admin_token_file", "reload"):
        assert field not in document
    assert config.check_files() == []


@pytest.mark.parametrize(
    "reload, field",
    [
        ({"verify": "0s"}, "reload.verify"),
        ({"verify": "soon"}, "reload.verify"),
        ({"verify": "30s", "min_success_rate": 1.5}, "reload.min_success_rate"),
        ({"verify": "30s", "max_p99_ratio": 0.5}, "reload.max_p99_ratio"),
        ({"verify": "30s", "min_requests": -1}, "reload.min_requests"),
        ({"min_success_rate": 0.9}, "reload.verify"),
    ],
)
def test_a_bad_reload_policy_names_its_field(reload, field):
    cfg = one_service(["127.0.0.1:8081"])
    cfg["reload"] = reload
    with pytest.raises(ConfigError, match=re.escape(f"{field}: ")):
        load(cfg)


@pytest.mark.parametrize(
    "text, reason",
    [
        (f"ops {TOKEN} extra\n", "line 1: expected 'NAME TOKEN', got 3 fields"),
        (f"# who\n\nops {TOKEN}\nops {TOKEN}x\n", "line 4: the name 'ops' is given twice"),
        ("ops short\n", "line 1: the token of 'ops' is shorter than 16 characters"),
        ("# nothing here\n", "no tokens"),
    ],
)
def test_check_refuses_a_bad_admin_token_file_naming_file_field_and_line(tmp_path, text, reason):
    (tmp_path / "admin.tokens").write_text(text)
    path = tmp_path / "mesh.toml"
    path.write_text('admin_token_file = "admin.tokens"\n' + BASE)
    done = subprocess.run([*MESHCORE, "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"{path}: admin_token_file: {tmp_path / 'admin.tokens'}: {reason}" in done.stderr


def test_check_refuses_a_missing_admin_token_file(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text('admin_token_file = "nowhere.tokens"\n' + BASE)
    done = subprocess.run([*MESHCORE, "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"admin_token_file: cannot read {tmp_path / 'nowhere.tokens'}: No such file" in done.stderr


def test_tokens_are_matched_by_value_with_comments_ignored():
    tokens = parse_tokens(f"# ops team\nops   {TOKEN}  # rotated monthly\nci\t{TOKEN[::-1]}\n", "t")
    assert tokens == [("ops", TOKEN), ("ci", TOKEN[::-1])]
    assert match_token(tokens, TOKEN[::-1]) == "ci"
    assert match_token(tokens, TOKEN[:-1]) is None
    with pytest.raises(TokenFileError):
        parse_tokens("", "t")
