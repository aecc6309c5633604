"""`meshcore check` and `Proxy.start()` agree (#16): one table of bad configs, each refused by
both with the same error type and the same message, naming the file and the field; and edge
configs that check accepts and start starts. Python is the one validator, so each refusal
comes from it; the core's own checks are guards it makes unreachable.

The config has no regexes (routes match by host, path prefix and exact header values), so
there is no regex dialect for the two sides to disagree on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import MESHCORE
from meshcore import Proxy

LISTENER = '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
SERVICE = '[[services]]\nname = "web"\nendpoints = [{ addr = "127.0.0.1:8081" }]\n\n'
BASE = LISTENER + SERVICE


def route(*lines: str, backends: str = 'backends = [{ service = "web" }]') -> str:
    return '[[routes]]\nlistener = "outbound"\n' + "".join(line + "\n" for line in (*lines, backends)) + "\n"


def service(*lines: str) -> str:
    return LISTENER + '[[services]]\nname = "web"\n' + "".join(line + "\n" for line in lines) + "\n"


def listener(*lines: str) -> str:
    return '[[listeners]]\nname = "outbound"\n' + "".join(line + "\n" for line in lines) + "\n" + SERVICE


IDENTITY_FILES = '[identity]\ntrust_anchors = "garbage.pem"\ncert = "garbage.pem"\nkey = "garbage.pem"\n\n'

# (id, config text, the field the message must name, the error type)
BAD = [
    # Bind addresses, as the core parses them (Rust's SocketAddr).
    ("ipv6-bind-without-brackets", listener('bind = "::1:0"'), "listeners[0].bind", "ConfigError"),
    ("ipv4-bind-in-brackets", listener('bind = "[127.0.0.1]:0"'), "listeners[0].bind", "ConfigError"),
    (
        "bind-port-in-arabic-digits",
        listener('bind = "127.0.0.1:\u0668\u0660"'),
        "listeners[0].bind",
        "ConfigError",
    ),
    ("bind-with-a-named-ipv6-scope", listener('bind = "[fe80::1%lo]:0"'), "listeners[0].bind", "ConfigError"),
    ("bind-port-too-large", listener('bind = "127.0.0.1:65536"'), "listeners[0].bind", "ConfigError"),
    (
        "endpoint-ipv6-without-brackets",
        service('endpoints = [{ addr = "::1:8081" }]'),
        "services[0].endpoints[0].addr",
        "ConfigError",
    ),
    (
        "two-listeners-on-one-port",
        listener('bind = "127.0.0.1:4140"') + '[[listeners]]\nname = "in"\nbind = "0.0.0.0:4140"\n',
        "listeners[1].bind",
        "ConfigError",
    ),
    (
        "admin-on-a-listener-port",
        'admin = "127.0.0.1:4140"\n' + listener('bind = "0.0.0.0:4140"'),
        "admin",
        "ConfigError",
    ),
    # Names and references between sections.
    (
        "duplicate-listener-name",
        BASE + '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n',
        "listeners[1].name",
        "ConfigError",
    ),
    ("duplicate-service-name", BASE + '[[services]]\nname = "web"\n', "services[1].name", "ConfigError"),
    (
        "route-on-an-unknown-listener",
        BASE + route().replace('"outbound"', '"inbound"'),
        "routes[0].listener",
        "ConfigError",
    ),
    (
        "backend-of-an-unknown-service",
        BASE + route(backends='backends = [{ service = "wbe" }]'),
        "routes[0].backends[0].service",
        "ConfigError",
    ),
    (
        "listener-to-an-unknown-service",
        listener('bind = "127.0.0.1:0"', 'service = "db"'),
        "listeners[0].service",
        "ConfigError",
    ),
    (
        "opaque-listener-without-a-service",
        listener('bind = "127.0.0.1:0"', 'protocol = "opaque"'),
        "listeners[0].service",
        "ConfigError",
    ),
    (
        "policy-rule-on-an-unknown-listener",
        BASE + '[policy]\nrules = [{ listener = "inbound" }]\n',
        "policy.rules[0].listener",
        "ConfigError",
    ),
    ("route-with-no-destination", BASE + route(backends=""), "routes[0]", "ConfigError"),
    (
        "backend-weights-all-zero",
        BASE + route(backends='backends = [{ service = "web", weight = 0 }]'),
        "routes[0].backends",
        "ConfigError",
    ),
    ("unknown-field", listener('bnid = "127.0.0.1:0"'), "listeners[0].bnid", "ConfigError"),
    # Header names and values, as the core's header types take them.
    (
        "header-name-with-a-space",
        BASE + route('headers = { "bad header" = "1" }'),
        "routes[0].headers",
        "ConfigError",
    ),
    (
        "header-value-with-a-newline",
        BASE + route('direct_response = { status = 200, headers = { "x-a" = "1\\n2" } }', backends=""),
        "routes[0].direct_response.headers",
        "ConfigError",
    ),
    (
        "header-name-to-remove-with-a-colon",
        BASE + route('response_headers = { remove = ["x:y"] }'),
        "routes[0].response_headers.remove",
        "ConfigError",
    ),
    # Redirects and direct responses.
    (
        "redirect-and-direct-response",
        BASE + route('redirect = { path = "/" }', "direct_response = { status = 200 }", backends=""),
        "routes[0]",
        "ConfigError",
    ),
    (
        "redirect-status-200",
        BASE + route("redirect = { status = 200 }", backends=""),
        "routes[0].redirect.status",
        "ConfigError",
    ),
    (
        "direct-response-status-600",
        BASE + route("direct_response = { status = 600 }", backends=""),
        "routes[0].direct_response.status",
        "ConfigError",
    ),
    (
        "rewrite-without-a-slash",
        BASE + route('rewrite = { path_prefix = "api" }'),
        "routes[0].rewrite.path_prefix",
        "ConfigError",
    ),
    # Filters: rate limits, retries.
    (
        "rate-limit-of-inf",
        BASE + route("rate_limit = { rps = inf, burst = 1 }"),
        "routes[0].rate_limit.rps",
        "ConfigError",
    ),
    (
        "rate-limit-burst-past-u32",
        BASE + route("rate_limit = { rps = 1, burst = 4294967296 }"),
        "routes[0].rate_limit.burst",
        "ConfigError",
    ),
    (
        "unknown-retry-condition",
        BASE + route('retry = { on = ["sometimes"] }'),
        "routes[0].retry.on",
        "ConfigError",
    ),
    (
        "retry-rate-past-u32",
        BASE + route("retry = { min_per_second = 4294967296 }"),
        "routes[0].retry.min_per_second",
        "ConfigError",
    ),
    # Durations and percentages.
    (
        "unparseable-duration",
        listener('bind = "127.0.0.1:0"', 'detect_timeout = "10 sec"'),
        "listeners[0].detect_timeout",
        "ConfigError",
    ),
    (
        "duration-past-ten-years",
        service('idle_timeout = "100000h"'),
        "services[0].idle_timeout",
        "ConfigError",
    ),
    (
        "ejection-percent-over-100",
        service("breaker = { max_ejection_percent = 101 }"),
        "services[0].breaker.max_ejection_percent",
        "ConfigError",
    ),
    (
        "breaker-threshold-past-u32",
        service("breaker = { consecutive_failures = 4294967296 }"),
        "services[0].breaker.consecutive_failures",
        "ConfigError",
    ),
    (
        "zonal-load-high-of-inf",
        service("zonal = { load_high = inf }"),
        "services[0].zonal.load_high",
        "ConfigError",
    ),
    (
        "max-connections-past-u64",
        listener('bind = "127.0.0.1:0"', "max_connections = 18446744073709551616"),
        "listeners[0].max_connections",
        "ConfigError",
    ),
    ("workers-zero", "workers = 0\n" + BASE, "workers", "ConfigError"),
    # Zone costs (u32 in the core).
    ("negative-zone-cost", 'costs = { "zone-b" = -1 }\n' + BASE, "costs.zone-b", "ConfigError"),
    ("zone-cost-past-u32", 'costs = { "zone-b" = 4294967296 }\n' + BASE, "costs.zone-b", "ConfigError"),
    # Policy rules.
    (
        "policy-network-as-a-netmask",
        BASE + '[policy]\nrules = [{ listener = "outbound", networks = ["10.0.0.0/255.0.0.0"] }]\n',
        "policy.rules[0].networks",
        "ConfigError",
    ),
    (
        "policy-network-with-an-ipv6-scope",
        BASE + '[policy]\nrules = [{ listener = "outbound", networks = ["fe80::1%1/64"] }]\n',
        "policy.rules[0].networks",
        "ConfigError",
    ),
    (
        "policy-prefix-too-long",
        BASE + '[policy]\nrules = [{ listener = "outbound", networks = ["10.0.0.0/33"] }]\n',
        "policy.rules[0].networks",
        "ConfigError",
    ),
    ("unknown-default-policy", BASE + '[policy]\ndefault = "allow"\n', "policy.default", "ConfigError"),
    # TLS and identity files.
    (
        "tls-without-an-identity",
        listener('bind = "127.0.0.1:0"', 'tls = "mesh"'),
        "listeners[0].tls",
        "ConfigError",
    ),
    (
        "endpoint-identity-without-an-identity",
        service('endpoints = [{ addr = "127.0.0.1:8081", identity = "spiffe://mesh.local/ns/a/sa/b" }]'),
        "services[0].endpoints[0].identity",
        "ConfigError",
    ),
    (
        "identity-file-missing",
        IDENTITY_FILES.replace('trust_anchors = "garbage.pem"', 'trust_anchors = "missing.pem"') + BASE,
        "identity.trust_anchors",
        "ConfigError",
    ),
    ("identity-files-not-pem", IDENTITY_FILES + BASE, "identity.cert", "ConfigError"),
    (
        "identity-trust-domain-in-capitals",
        IDENTITY_FILES.replace("[identity]\n", '[identity]\ntrust_domains = ["Mesh.Local"]\n') + BASE,
        "identity.trust_domains",
        "ConfigError",
    ),
    # Plugins, loaded as start loads them.
    (
        "plugin-with-a-misspelled-hook",
        '[[plugins]]\npath = "typo.py"\n\n' + BASE,
        "plugins[0].path",
        "PluginError",
    ),
    ("plugin-file-missing", '[[plugins]]\npath = "nowhere.py"\n\n' + BASE, "plugins[0].path", "PluginError"),
    (
        "plugin-on-an-unknown-route",
        '[[plugins]]\npath = "hooks.py"\nroutes = ["api"]\n\n' + BASE + route(),
        "plugins[0].routes[0]",
        "ConfigError",
    ),
]

# Configs at the edges of what is valid: check accepts them and start starts them.
GOOD = [
    ("ipv6-loopback", listener('bind = "[::1]:0"')),
    ("port-with-leading-zeros", listener('bind = "127.0.0.1:00"')),
    ("ipv4-mapped-endpoint", service('endpoints = [{ addr = "[::ffff:127.0.0.1]:8081" }]')),
    (
        "limits-at-the-core-types-edges",
        'costs = { "zone-b" = 4294967295, "east/zone-c" = 0 }\n'
        + listener('bind = "127.0.0.1:0"', "max_connections = 9223372036854775807")
        + route(
            "rate_limit = { rps = 0.001, burst = 4294967295 }",
            "retry = { min_per_second = 4294967295, on = ['5xx', 'reset', 'unavailable'] }",
        ),
    ),
    (
        "routes-that-answer-themselves",
        BASE
        + route('redirect = { status = 308, scheme = "https" }', backends="")
        + route(
            'direct_response = { status = 599, headers = { "x-a" = "tab\\tand caf\u00e9" } }', backends=""
        ),
    ),
    (
        "policy-networks-bare-and-zero-length",
        BASE
        + '[policy]\ndefault = "deny"\n'
        + 'rules = [{ networks = ["::1", "0.0.0.0/0", "10.0.0.0/08"] }]\n',
    ),
    (
        "breaker-off-and-zero-durations",
        service("breaker = false", 'connect_timeout = "0ms"', "zonal = { dwell = 0 }"),
    ),
    ("plugin-with-hooks", '[[plugins]]\npath = "hooks.py"\n\n' + BASE + route()),
]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory with the files the configs name."""
    (tmp_path / "garbage.pem").write_text("not PEM at all\n")
    (tmp_path / "typo.py").write_text("def on_reqest(req):\n    pass\n")
    (tmp_path / "hooks.py").write_text("def on_request(req):\n    pass\n")
    return tmp_path


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCORE, "check", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("text, field, kind", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_check_and_start_refuse_alike(config_dir, text, field, kind):
    path = config_dir / "mesh.toml"
    path.write_text(text)
    checked = check(path)
    assert checked.returncode == 1, checked.stdout
    with pytest.raises(Exception) as started:
        proxy = Proxy(path)
        proxy.start()
        proxy.stop(0)
    error = started.value
    assert type(error).__name__ == kind, repr(error)
    # The CLI prints `meshcore: <type>: <message>`: the same type, the same text.
    assert checked.stderr == f"meshcore: {kind}: {error}\n"
    assert f"{path}: {field}: " in str(error), str(error)


@pytest.mark.parametrize("text", [case[1] for case in GOOD], ids=[case[0] for case in GOOD])
def test_what_check_accepts_starts(config_dir, text):
    path = config_dir / "mesh.toml"
    path.write_text(text)
    checked = check(path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{path}: ok ")
    proxy = Proxy(path).start()
    try:
        assert proxy.running
        assert set(proxy.addresses) == {"outbound"}
    finally:
        proxy.stop(0)
