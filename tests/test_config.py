"""Config loading and validation: errors name the file, the field and the reason."""

from __future__ import annotations

import json

import pytest

import meshcore
from meshcore import ConfigError, MeshcoreError
from meshcore.config import load, parse_duration

GOOD_TOML = """
admin = "127.0.0.1:0"
zone = "zone-a"

[[listeners]]
name = "outbound"
bind = "127.0.0.1:0"
protocol = "auto"

[[routes]]
listener = "outbound"
host = "web.local"
path_prefix = "/"
headers = { "x-canary" = "1" }
timeout = "10s"
backends = [{ service = "web", weight = 90 }, { service = "web-v2", weight = 10 }]

[[services]]
name = "web"
balancer = "peak-ewma"
protocol = "auto"
endpoints = [{ addr = "127.0.0.1:8081", zone = "zone-a" }, { addr = "127.0.0.1:8082", zone = "zone-b" }]

[[services]]
name = "web-v2"
endpoints = [{ addr = "127.0.0.1:8083" }]
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_issue_example_loads(tmp_path):
    cfg = load(write(tmp_path, "mesh.toml", GOOD_TOML))
    assert cfg.routes[0].backends[1].weight == 10
    core = cfg.to_core()
    assert core["routes"][0]["timeout_ms"] == 10_000
    assert core["services"][0]["connect_timeout_ms"] == 1000


def test_yaml_and_dict_load_the_same(tmp_path):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    import yaml

    data = tomllib.loads(GOOD_TOML)
    from_yaml = load(write(tmp_path, "mesh.yaml", yaml.safe_dump(data)))
    assert from_yaml.model_dump() == load(data).model_dump()


def test_unknown_service_names_path_and_valid_choices(tmp_path):
    bad = GOOD_TOML.replace('service = "web-v2"', 'service = "web-v3"')
    path = write(tmp_path, "mesh.toml", bad)
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "routes[0].backends[1].service" in msg
    assert "unknown service 'web-v3' (valid: web, web-v2)" in msg
    assert isinstance(err.value, MeshcoreError)


@pytest.mark.parametrize(
    "change, field, reason",
    [
        (
            ('protocol = "auto"\n\n[[routes]]', 'protocol = "quic"\n\n[[routes]]'),
            "listeners[0].protocol",
            "'auto', 'http1', 'http2' or 'opaque'",
        ),
        (('timeout = "10s"', 'timeout = "10 parsecs"'), "routes[0].timeout", "invalid duration"),
        (('bind = "127.0.0.1:0"', 'bind = "localhost"'), "listeners[0].bind", "expected 'ip:port'"),
        (
            ('balancer = "peak-ewma"', 'balancer = "fastest"'),
            "services[0].balancer",
            "'peak-ewma', 'round-robin' or 'zonal'",
        ),
        (('zone = "zone-a"\n', 'zone = "zone-a"\nzoen = "typo"\n'), "zoen", "unknown field"),
        (("weight = 90", "weight = -1"), "routes[0].backends[0].weight", "greater than or equal to 0"),
        (
            ('listener = "outbound"', 'listener = "inbound"'),
            "routes[0].listener",
            "unknown listener 'inbound' (valid: outbound)",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, change, field, reason):
    old, new = change
    assert old in GOOD_TOML
    path = write(tmp_path, "bad.toml", GOOD_TOML.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert f"{path}: {field}: " in msg, msg
    assert reason in msg, msg


def test_unparseable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot parse"):
        load(write(tmp_path, "broken.toml", "listeners = [[["))
    with pytest.raises(ConfigError, match="cannot read file"):
        load(tmp_path / "missing.toml")


def test_opaque_listener_needs_a_service():
    with pytest.raises(
        ConfigError, match=r"listeners\[0\].service: an opaque listener needs a target service"
    ):
        load({"listeners": [{"name": "t", "bind": "127.0.0.1:0", "protocol": "opaque"}]})


def test_durations():
    assert parse_duration("300ms") == 300
    assert parse_duration("1.5s") == 1500
    assert parse_duration("2m") == 120_000
    assert parse_duration(3) == 3000
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_rust_rechecks_what_it_is_handed():
    # Python is the front door, but the native core refuses a bad document too.
    document = load(
        {
            "listeners": [{"name": "o", "bind": "127.0.0.1:0"}],
            "services": [{"name": "web"}],
            "routes": [{"listener": "o", "backends": [{"service": "web"}]}],
        }
    ).to_core()
    document["routes"][0]["backends"][0]["service"] = "nope"
    with pytest.raises(ConfigError, match="unknown service"):
        meshcore._core.ProxyCore(json.dumps(document))


def test_bad_reload_keeps_running_config(backend, proxy):
    import httpx

    from conftest import one_service

    b = backend("web")
    p = proxy(one_service([b.addr]))
    bad = one_service([b.addr])
    bad["routes"][0]["backends"][0]["service"] = "ghost"
    with pytest.raises(ConfigError, match="ghost"):
        p.reload(bad)
    assert httpx.get(p.url("outbound")).status_code == 200
    assert p.config.routes[0].backends[0].service == "web"


def test_good_reload_swaps_routes_without_restart(backend, proxy):
    import httpx

    from conftest import one_service

    old, new = backend("old"), backend("new")
    p = proxy(one_service([old.addr]))
    addr = p.addresses["outbound"]
    with httpx.Client() as c:
        assert c.get(p.url("outbound")).headers["x-backend"] == "old"
        cfg = one_service([new.addr])
        cfg["listeners"][0]["bind"] = "127.0.0.1:0"
        p.reload(cfg)
        assert c.get(p.url("outbound")).headers["x-backend"] == "new"
    assert p.addresses["outbound"] == addr


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_idle_timeout_closes_pooled_connections_and_a_long_one_keeps_them(upstream, proxy):
    import httpx

    from conftest import one_service, wait_until

    short_upstream, long_upstream = upstream(lambda *_: OK), upstream(lambda *_: OK)
    short_cfg, long_cfg = one_service([short_upstream.addr]), one_service([long_upstream.addr])
    short_cfg["services"][0]["idle_timeout"] = "200ms"
    long_cfg["services"][0]["idle_timeout"] = "1h"
    short, long = proxy(short_cfg), proxy(long_cfg)
    with httpx.Client() as c:
        assert c.get(short.url("outbound")).text == "ok"
        assert c.get(long.url("outbound")).text == "ok"
        # Nothing but the idle timeout closes a pooled connection that no request uses.
        wait_until(
            lambda: short_upstream.closed == [1], 15, "the proxy to close the connection idle past 200ms"
        )
        # The control, idle just as long: still open, and reused.
        assert long_upstream.closed == []
        assert c.get(short.url("outbound")).text == "ok"
        assert c.get(long.url("outbound")).text == "ok"
    assert (short_upstream.connections, long_upstream.connections) == (2, 1)
    assert len(short_upstream.heads) == len(long_upstream.heads) == 2


def test_reload_applies_a_new_idle_timeout(upstream, proxy):
    import httpx

    from conftest import one_service, wait_until

    u = upstream(lambda *_: OK)
    cfg = one_service([u.addr])
    cfg["services"][0]["idle_timeout"] = "1h"
    p = proxy(cfg)
    with httpx.Client() as c:
        assert c.get(p.url("outbound")).text == "ok"
        cfg["services"][0]["idle_timeout"] = "200ms"
        p.reload(cfg)
        assert c.get(p.url("outbound")).text == "ok"
        used = u.connections  # the newest connection carried the request just made
        wait_until(
            lambda: used in u.closed, 15, "the proxy to close the connection idle past the reloaded 200ms"
        )
        assert c.get(p.url("outbound")).text == "ok"
    assert u.connections == used + 1


def test_reload_applies_a_listener_change_in_place(backend, proxy):
    from conftest import one_service

    cfg = one_service([backend().addr])
    p = proxy(cfg)
    before = p.addresses["outbound"]
    cfg["listeners"][0]["header_read_timeout"] = "5s"
    p.reload(cfg)
    assert p.config.listeners[0].header_read_timeout == "5s"
    assert p.addresses["outbound"] == before, "the same socket serves on"


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    # Found by fuzzing (fuzz/README.md): read_text() raised UnicodeDecodeError.
    path = tmp_path / "mesh.toml"
    path.write_bytes(b'[[listeners]]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, "9999999999h"])
def test_durations_must_be_finite_and_sane(value):
    # Found by fuzzing: `idle_timeout = inf` raised OverflowError out of load().
    with pytest.raises(ValueError, match="too long"):
        parse_duration(value)
    cfg = {"listeners": [{"name": "l", "bind": "127.0.0.1:0", "idle_timeout": value}]}
    with pytest.raises(ConfigError, match="idle_timeout"):
        load(cfg)


def test_a_json_file_is_read_as_json(tmp_path):
    path = tmp_path / "proxy.json"
    path.write_text('{"listeners": [{"name": "out", "bind": "127.0.0.1:0"}]}')
    assert load(path).listeners[0].name == "out"
