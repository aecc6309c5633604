"""The telemetry settings (#20): access logs (global or per listener) and tracing, validated
once, with errors that name the field; what the core is handed."""

from __future__ import annotations

import pytest

from meshcore import ConfigError
from meshcore.config import load
from meshcore.proxy import check


def config(**extra):
    return {
        "listeners": [
            {"name": "outbound", "bind": "127.0.0.1:0"},
            {"name": "inbound", "bind": "127.0.0.1:0"},
        ],
        "routes": [{"listener": "outbound", "backends": [{"service": "web"}]}],
        "services": [{"name": "web", "endpoints": [{"addr": "127.0.0.1:1"}]}],
        **extra,
    }


def test_a_listener_logs_to_its_own_access_log_else_to_the_global_one(tmp_path):
    data = config(access_log={"path": "requests.log", "format": "common"})
    data["listeners"][1]["access_log"] = {"path": "stdout"}
    (tmp_path / "mesh.toml").write_text("")
    cfg = load(data)
    cfg._base_dir = str(tmp_path)
    core = cfg.to_core()
    outbound, inbound = (lst["access_log"] for lst in core["listeners"])
    assert outbound == {"format": "common", "path": str(tmp_path / "requests.log"), "buffer": 16384}
    assert inbound == {"format": "json", "path": "stdout", "buffer": 16384}
    assert load(config()).to_core()["listeners"][0]["access_log"] is None


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"access_log": {"format": "xml"}}, "access_log.format", "'json' or 'common'"),
        ({"access_log": {"buffer": 0}}, "access_log.buffer", "greater than or equal to 1"),
        ({"tracing": {"sampling": 1.5}}, "tracing.sampling", "less than or equal to 1"),
        ({"tracing": {"otlp": "https://collector:4318"}}, "tracing.otlp", "OTLP over plain HTTP"),
        ({"tracing": {"otlp": "collector"}}, "tracing.otlp", "host:port"),
        ({"tracing": {"otlp": "collector:4318/v1/traces"}}, "tracing.otlp", "host:port"),
    ],
)
def test_bad_telemetry_settings_name_their_field(extra, field, reason):
    with pytest.raises(ConfigError) as e:
        load(config(**extra))
    assert field in str(e.value) and reason in str(e.value)


def test_tracing_is_handed_to_the_core_with_its_collector_as_host_port():
    core = load(config(tracing={"otlp": "http://collector.local:4318/", "sampling": 0.25})).to_core()
    assert core["tracing"] == {"sampling": 0.25, "otlp": "collector.local:4318", "service_name": "meshcore"}
    assert load(config(tracing={})).to_core()["tracing"]["otlp"] is None
    assert load(config()).to_core()["tracing"] is None


def test_check_names_an_access_log_that_cannot_be_written(tmp_path):
    missing = tmp_path / "no-such-dir" / "requests.log"
    data = config()
    data["listeners"][0]["access_log"] = {"path": str(missing)}
    with pytest.raises(ConfigError) as e:
        check(data)
    assert "listeners[0].access_log.path" in str(e.value) and "does not exist" in str(e.value)
    assert not missing.parent.exists(), "check creates nothing"
    data["listeners"][0]["access_log"] = {"path": str(tmp_path)}
    with pytest.raises(ConfigError, match="is a directory"):
        check(data)
    data["listeners"][0]["access_log"] = {"path": str(tmp_path / "requests.log")}
    check(data)
    assert not (tmp_path / "requests.log").exists()
