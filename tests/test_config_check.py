"""`meshcore check` and config loading: what `run` would refuse, check refuses first,
with the file, the field and the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import MESHCORE
from meshcore import ConfigError, Proxy
from meshcore.config import load

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


# -- check runs every validation run does (#14.7) ---------------------------------------------


def run_refusal(path: Path) -> str:
    """`meshcore run`'s stderr for a config it must refuse before serving."""
    r = subprocess.run([*MESHCORE, "run", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    return r.stderr


def check_and_run_refuse(path: Path, field: str, reason: str) -> None:
    """check fails naming the file, the field and the reason, with exactly run's message."""
    refused(path, field, reason)
    assert check(path).stderr == run_refusal(path)


OUTBOUND = listener("outbound", "127.0.0.1:0") + SERVICE


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    from mesh_helpers import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"))


def with_identity(tmp_path: Path, ca: Path, **files: str) -> Path:
    """A config with [identity] from files; `files` overrides trust_anchors, cert or key."""
    from mesh_helpers import issue

    crt, key = issue(ca, "ns/default/sa/web", tmp_path / "web")
    paths = {"trust_anchors": str(ca / "trust-anchor.pem"), "cert": crt.name, "key": key.name, **files}
    path = tmp_path / "mesh.toml"
    path.write_text("[identity]\n" + "".join(f'{k} = "{v}"\n' for k, v in paths.items()) + "\n" + OUTBOUND)
    return path


def test_good_identity_files_pass(tmp_path, ca):
    r = check(with_identity(tmp_path, ca))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("field", ["trust_anchors", "cert", "key"])
def test_a_missing_identity_file_is_refused(tmp_path, ca, field):
    path = with_identity(tmp_path, ca, **{field: "missing.pem"})
    check_and_run_refuse(
        path, f"identity.{field}", f"cannot read {tmp_path / 'missing.pem'}: No such file or directory"
    )


@pytest.mark.parametrize(
    "field, content, reason",
    [
        ("cert", "not a certificate\n", "no PEM certificate"),
        ("trust_anchors", "", "no PEM certificate"),
        ("key", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no PEM private key"),
        ("cert", "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n", "not valid base64"),
        (
            "trust_anchors",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "invalid trust anchor",
        ),
    ],
)
def test_an_identity_file_that_is_not_pem_is_refused(tmp_path, ca, field, content, reason):
    (tmp_path / "bad.pem").write_text(content)
    path = with_identity(tmp_path, ca, **{field: "bad.pem"})
    check_and_run_refuse(path, f"identity.{field}", reason)


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path, ca):
    from mesh_helpers import issue

    _, other_key = issue(ca, "ns/default/sa/other", tmp_path / "other")
    path = with_identity(tmp_path, ca, key=other_key.name)
    check_and_run_refuse(path, "identity.key", f"{other_key}: certificate and key do not match")


@pytest.mark.parametrize(
    "case, reason",
    [
        # Its URI has "key" in it, as has the reason: the field named is still the certificate.
        ("no SPIFFE ID", 'names no workload: "https://monkey.example/" is not a SPIFFE ID'),
        ("two SPIFFE IDs", "names no workload: not exactly one URI SAN"),
        ("expired", "the certificate has expired"),
        ("another CA's", "the certificate chains to none of the trust anchors"),
    ],
)
def test_a_certificate_every_peer_would_refuse_is_refused(tmp_path, ca, case, reason):
    from mesh_helpers import TRUST_DOMAIN, issue, issue_expired, issue_leaf, make_ca
    from meshcore.identity import spiffe_id

    out = tmp_path / "leaf"
    if case == "no SPIFFE ID":
        crt, key = issue_leaf(ca, ["https://monkey.example/"], out)
    elif case == "two SPIFFE IDs":
        ids = [spiffe_id(TRUST_DOMAIN, f"ns/default/sa/{sa}") for sa in ("web", "api")]
        crt, key = issue_leaf(ca, ids, out)
    elif case == "expired":
        crt, key = issue_expired(ca, "ns/default/sa/web", out)
    else:
        crt, key = issue(make_ca(tmp_path / "other-ca"), "ns/default/sa/web", out)
    path = with_identity(tmp_path, ca, cert=crt.name, key=key.name)
    check_and_run_refuse(path, "identity.cert", f"{crt}: {reason}")


def test_a_plugin_with_a_misspelled_hook_is_refused(tmp_path):
    (tmp_path / "auth.py").write_text("def on_reqeust(req):\n    pass\n")
    path = tmp_path / "mesh.toml"
    path.write_text('[[plugins]]\npath = "auth.py"\n\n' + OUTBOUND)
    check_and_run_refuse(
        path,
        "plugins[0].path",
        f"{tmp_path / 'auth.py'}: unknown hook 'on_reqeust'; did you mean 'on_request'?",
    )
    assert "PluginError" in check(path).stderr


@pytest.mark.parametrize(
    "route, field, reason",
    [
        ('request_headers = { add = { "x bad" = "1" } }', "routes[0].request_headers.add", "'x bad'"),
        ('response_headers = { remove = ["x:y"] }', "routes[0].response_headers.remove", "'x:y'"),
        ('headers = { "" = "1" }', "routes[0].headers", "invalid header name ''"),
        (
            'request_headers = { set = { "x-ok" = "a\\nb" } }',
            "routes[0].request_headers.set",
            "invalid value for header 'x-ok'",
        ),
    ],
)
def test_invalid_header_names_and_values_are_refused(tmp_path, route, field, reason):
    path = tmp_path / "mesh.toml"
    path.write_text(
        OUTBOUND + f'[[routes]]\nlistener = "outbound"\n{route}\nbackends = [{{ service = "web" }}]\n'
    )
    check_and_run_refuse(path, field, reason)


@pytest.mark.parametrize(
    "name, text", [("empty.toml", ""), ("comments.toml", "# nothing yet\n"), ("e.yaml", "")]
)
def test_an_empty_file_is_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    r = check(path)
    assert r.returncode == 1
    assert f"{path}: the file is empty" in r.stderr
    assert r.stderr == run_refusal(path)


# -- unknown fields get help (#14.8) ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, field, reason",
    [
        (
            listener("outbound", "127.0.0.1:0").replace("bind", "bnid") + SERVICE,
            "listeners[0].bnid",
            "unknown field; did you mean 'bind'?",
        ),
        (
            OUTBOUND + "retry = { limit = 2 }\n",
            "services[0].retry",
            "unknown field; 'retry' belongs on routes (routes[].retry)",
        ),
        ('zoen = "zone-a"\n' + OUTBOUND, "zoen", "unknown field; did you mean 'zone'?"),
        (
            OUTBOUND + "breaker = { consecutive_failure = 3 }\n",
            "services[0].breaker.consecutive_failure",
            "unknown field; did you mean 'consecutive_failures'?",
        ),
        (
            listener("outbound", "127.0.0.1:0") + 'zone = "zone-a"\n\n' + SERVICE,
            "listeners[0].zone",
            "unknown field; 'zone' belongs at the top level or on endpoints (services[].endpoints[].zone)",
        ),
        (
            OUTBOUND + 'timeout = "2s"\n',
            "services[0].timeout",
            "unknown field; did you mean 'idle_timeout'? 'timeout' belongs on plugins (plugins[].timeout) "
            "or on routes (routes[].timeout)",
        ),
    ],
)
def test_an_unknown_field_gets_a_suggestion(tmp_path, text, field, reason):
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert (field, reason) in err.value.problems, str(err.value)
    refused(path, field, reason)


def test_an_unknown_field_with_nothing_close_says_only_that(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text(OUTBOUND + "frobnicate = true\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.problems == [("services[0].frobnicate", "unknown field")]


def test_a_table_with_a_typo_is_not_reported_as_a_failed_false(tmp_path):
    # `breaker` is a table or `false`; pydantic reports both members, under its own tag names.
    path = tmp_path / "mesh.toml"
    path.write_text(OUTBOUND + "breaker = { jiter = 0.1 }\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.problems == [
        ("services[0].breaker.jiter", "unknown field; did you mean 'jitter'?"),
    ]
