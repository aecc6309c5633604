"""A running proxy keeps its config compact (meshcore.kept_config, #18): not the validated models,
which weigh 30 MB at 10,000 services, yet `proxy.config` gives back the same config, whole."""

from __future__ import annotations

import copy
import gc
import json
import weakref
from typing import Any

import pytest
from pydantic import BaseModel
from test_snapshot import RICH

from meshcore import ConfigError, Proxy
from meshcore.config import Config, load, loads
from meshcore.kept_config import KeptConfig


def fields_given(model: Any) -> Any:
    """Every model's set fields, all the way down (what `model_dump(exclude_unset=True)` reads)."""
    if isinstance(model, BaseModel):
        return (
            sorted(model.model_fields_set),
            {name: fields_given(getattr(model, name)) for name in type(model).model_fields},
        )
    if isinstance(model, (list, tuple)):
        return [fields_given(m) for m in model]
    if isinstance(model, dict):
        return {k: fields_given(v) for k, v in model.items()}
    return model


def rich() -> dict[str, Any]:
    data = copy.deepcopy(RICH)
    data.update(
        admin="127.0.0.1:0",
        state_dir="state",
        watch=True,
        reload={"verify": "30s", "min_requests": 5},
        egress={
            "default": "deny",
            "rules": [{"action": "allow", "networks": ["10.0.0.0/8"], "ports": [443, "8000-8100"]}],
        },
    )
    data["services"].append(
        {
            "name": "zoned",
            "balancer": "zonal",
            "connect_timeout": 2,
            "zonal": {"load_high": 3.0},
            "breaker": {"jitter": 0.25},
            "addresses": ["10.96.0.1:80"],
        }
    )
    return data


def test_the_kept_config_comes_back_equal_with_the_same_fields_given(tmp_path):
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(rich()))
    original = loads(path.read_text(), "json", name=str(path), base_dir=tmp_path)
    expected = (original.model_dump(), fields_given(original))
    kept = KeptConfig(original)
    del original
    gc.collect()

    again = kept.config()
    assert (again.model_dump(), fields_given(again)) == expected
    assert (again._source, again._base_dir) == (str(path), str(tmp_path))
    assert again.resolve_path("state") == tmp_path / "state"
    assert kept.config() is again  # built once while someone holds it
    # The settings leave the two long lists out, nothing else.
    assert kept.settings.routes == [] and kept.settings.services == []
    assert kept.settings.model_dump(exclude={"routes", "services"}) == again.model_dump(
        exclude={"routes", "services"}
    )
    assert kept.discovered == {"plain", "zoned"}


def test_text_that_json_cannot_hold_is_kept_as_given():
    data = {
        "listeners": [{"name": "in", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "in", "direct_response": {"status": 200, "body": "half a pair: \ud800"}}],
    }
    config = load(data)
    kept = KeptConfig(config)
    del config
    gc.collect()
    assert kept.config().routes[0].direct_response.body == "half a pair: \ud800"


def test_a_proxy_does_not_hold_the_validated_models(backend):
    b = backend()
    data = {
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "out", "backends": [{"service": "web"}]}],
        "services": [{"name": "web", "endpoints": [{"addr": b.addr}]}, {"name": "found"}],
    }
    config = load(data)
    held = weakref.ref(config)
    p = Proxy(config)
    assert p.config is config  # the caller's own, while the caller holds it
    del config
    gc.collect()
    assert held() is None
    with p:
        assert p.config == load(data)
        assert p.config.services[0].endpoints[0].addr == b.addr
        assert p.settings.services == [] and p.settings.listeners[0].name == "out"
        # What an endpoint update checks is kept too.
        p.update_endpoints("found", [{"addr": b.addr}])
        with pytest.raises(ConfigError, match="lists its own endpoints"):
            p.update_endpoints("web", [{"addr": b.addr}])
        with pytest.raises(ConfigError, match="unknown service 'nope'"):
            p.update_endpoints("nope", [{"addr": b.addr}])


def test_a_reload_keeps_the_new_config_compact(backend, tmp_path):
    b = backend()
    data = {
        "listeners": [{"name": "out", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "out", "backends": [{"service": "web"}]}],
        "services": [{"name": "web", "endpoints": [{"addr": b.addr}]}],
    }
    with Proxy(data) as p:
        new = load(
            {**data, "routes": [{"listener": "out", "name": "renamed", "backends": [{"service": "web"}]}]}
        )
        held = weakref.ref(new)
        p.reload(new)
        del new
        gc.collect()
        assert held() is None
        assert p.config.route_names() == ["renamed"]
        assert isinstance(p.config, Config)


def whole_configs() -> list[Config]:
    """The validated configs alive with their routes (a proxy's `settings` have none)."""
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Config) and o.routes]


def test_meshcore_runs_lifecycle_leaves_no_whole_config_behind(tmp_path):
    from meshcore.lifecycle.manager import Lifecycle

    def mesh(body: str) -> str:
        return (
            '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n[[routes]]\nlistener = "outbound"\n'
            'direct_response = { status = 200, body = "' + body + '" }\n'
        )

    path = tmp_path / "mesh.toml"
    path.write_text(mesh("one"))
    proxy = Proxy(path).start()
    lifecycle = Lifecycle.for_proxy(proxy, path)
    try:
        lifecycle.start()  # builds the whole config to hash it, and reads the file again
        assert whole_configs() == []
        refused = mesh("three").replace("status = 200", "status = 2000")
        for text in (mesh("two"), mesh("two"), refused):  # applied, unchanged, refused
            path.write_text(text)
            lifecycle.reload(source="file", who="ops")
            assert whole_configs() == []
        assert lifecycle.status()["reloads"] == {"applied": 1, "refused": 1, "unchanged": 1}
        assert proxy.config.routes[0].direct_response.body == "two"
    finally:
        lifecycle.close()
        proxy.stop(0.5)
