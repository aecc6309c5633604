"""`meshcore policy explain`: which rule decides a request and why, from a config file, with the
exit status a script can test (0 allowed, 1 denied, 2 a bad config or argument)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshcore.cli import main

WEB = "spiffe://mesh.local/ns/default/sa/web"
ALICE = "spiffe://mesh.local/ns/ops/sa/alice"

CONFIG = """
[[listeners]]
name = "inbound"
bind = "127.0.0.1:4143"
direction = "inbound"

[[listeners]]
name = "outbound"
bind = "127.0.0.1:4140"

[policy]
default = "all-authenticated"

[[policy.rules]]
name = "ops-admin"
listener = "inbound"
path_prefix = "/admin"
identities = ["spiffe://mesh.local/ns/ops/sa/*"]

[[policy.rules]]
name = "probes"
listener = "inbound"
methods = ["GET"]
networks = ["10.0.0.0/8"]
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "api.toml"
    path.write_text(CONFIG)
    return path


def explain(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_caller_the_protecting_rule_does_not_name_is_denied_and_told_why(config, capsys):
    code, out, _ = explain(capsys, "--config", str(config), "--identity", WEB, "--path", "/admin/x")
    assert code == 1
    assert "protected by path_prefix /admin: only its rules decide" in out
    assert "rule ops-admin: the caller's identity does not match" in out
    assert "the default (default:all-authenticated) does not apply to a protected path" in out
    assert "decision: denied: 403" in out and "protected:/admin" in out


def test_the_named_caller_is_allowed_by_the_rule(config, capsys):
    code, out, _ = explain(
        capsys, "--config", str(config), "--identity", ALICE, "--path", "/admin/x", "--json"
    )
    assert code == 0
    answer = json.loads(out)
    assert answer["decision"] == "allow"
    assert answer["rule"] == "ops-admin"
    assert answer["protected_by"] == ["/admin"]
    assert answer["tried"] == [{"rule": "ops-admin", "failed": None}]
    assert answer["listener"] == "inbound"


def test_an_unprotected_path_goes_to_the_unscoped_rules_then_the_default(config, capsys):
    code, out, _ = explain(
        capsys, "--config", str(config), "--path", "/other", "--from", "10.1.2.3", "--json"
    )
    assert (code, json.loads(out)["rule"]) == (0, "probes")
    code, out, _ = explain(
        capsys,
        "--config",
        str(config),
        "--path",
        "/other",
        "--method",
        "POST",
        "--from",
        "10.1.2.3",
        "--json",
    )
    answer = json.loads(out)
    assert code == 1
    assert answer["tried"] == [{"rule": "probes", "failed": "method"}]
    assert answer["default_decided"] is True
    assert answer["rule"] == "default:all-authenticated"
    code, out, _ = explain(capsys, "--config", str(config), "--identity", WEB, "--path", "/other")
    assert code == 0
    assert "rule probes: the caller's address is in none of its networks" in out
    assert "no rule allows: the default decides (default:all-authenticated)" in out


def test_the_path_is_normalised_as_the_proxy_does_before_it_is_decided(config, capsys):
    code, out, _ = explain(capsys, "--config", str(config), "--identity", WEB, "--path", "/public/../admin/x")
    assert code == 1
    assert "GET /admin/x (normalised from /public/../admin/x)" in out
    code, out, _ = explain(capsys, "--config", str(config), "--path", "/a/%2e%2e%2f", "--json")
    answer = json.loads(out)
    assert (code, answer["decision"], answer["status"]) == (1, "refused", 400)


def test_an_opaque_connection_meets_only_rules_without_path_or_method(config, capsys):
    code, out, _ = explain(
        capsys, "--config", str(config), "--identity", ALICE, "--from", "10.0.0.1", "--json"
    )
    answer = json.loads(out)
    assert code == 0
    assert answer["protected_by"] == []
    assert answer["tried"] == [{"rule": "probes", "failed": "method"}]
    assert answer["rule"] == "default:all-authenticated"


def test_bad_arguments_and_configs_exit_2_with_the_reason(config, tmp_path, capsys):
    code, _, err = explain(capsys, "--config", str(config), "--path", "/", "--listener", "outbound")
    assert code == 2 and "no inbound listener 'outbound' (inbound: inbound)" in err
    code, _, err = explain(capsys, "--config", str(config), "--path", "/", "--method", "GE T")
    assert code == 2 and "is not a request method" in err
    code, _, err = explain(capsys, "--config", str(config), "--path", "/", "--from", "nowhere")
    assert code == 2 and "is not an IP address" in err
    two = tmp_path / "two.toml"
    two.write_text(CONFIG.replace('name = "outbound"', 'name = "inbound-b"\ndirection = "inbound"'))
    code, _, err = explain(capsys, "--config", str(two), "--path", "/")
    assert code == 2 and "the config has 2 inbound listeners: name one" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('methods = ["GET"]', 'methods = ["GE T"]'))
    code, _, err = explain(capsys, "--config", str(bad), "--path", "/")
    assert code == 2 and "policy.rules[1].methods" in err


def test_the_installed_command_runs_it(config):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshcore.cli",
            "policy",
            "explain",
            "--config",
            str(config),
            "--path",
            "/admin",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "protected by path_prefix /admin" in done.stdout


ROUTED = """
[[listeners]]
name = "inbound"
bind = "127.0.0.1:4143"
direction = "inbound"

[[services]]
name = "app"
endpoints = [{ addr = "127.0.0.1:8080" }]

[[routes]]
name = "console"
listener = "inbound"
host = "console.local"
backends = [{ service = "app" }]

[[routes]]
name = "canary"
listener = "inbound"
headers = { x-canary = "1" }
backends = [{ service = "app" }]

[[routes]]
name = "app"
listener = "inbound"
backends = [{ service = "app" }]

[policy]
default = "all-authenticated"

[[policy.rules]]
name = "ops-console"
routes = ["console", "canary"]
identities = ["spiffe://mesh.local/ns/ops/sa/*"]
"""


def test_the_route_is_found_as_the_proxy_finds_it_by_host_and_headers(tmp_path, capsys):
    config = tmp_path / "routed.toml"
    config.write_text(ROUTED)
    args = ("--config", str(config), "--identity", WEB, "--path", "/x")
    code, out, _ = explain(capsys, *args, "--host", "Console.local:8080")
    assert code == 1
    assert "route: console" in out
    assert "protected by route console: only its rules decide there" in out
    assert "protected:route:console" in out
    code, out, _ = explain(capsys, *args, "--header", "x-canary: 1", "--json")
    assert code == 1
    assert json.loads(out)["protected_by"] == ["route canary"]
    code, out, _ = explain(capsys, *args, "--json")
    answer = json.loads(out)
    assert code == 0
    assert (answer["route"], answer["protected_by"]) == ("app", [])
    assert answer["rule"] == "default:all-authenticated"
    code, _, err = explain(capsys, *args, "--header", "x-canary")
    assert code == 2
    assert "NAME:VALUE" in err
