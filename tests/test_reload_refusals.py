"""`Proxy.reload()` refuses what only a restart can apply (workers, the admin API, the
identity), names the field, and keeps the running config in force and on `/config`."""

from __future__ import annotations

import copy
import json

import httpx
import pytest

from conftest import closed_port, one_service
from meshcore import ConfigError


def admin_config(proxy) -> dict:
    host, port = proxy.admin_address
    return httpx.get(f"http://{host}:{port}/config").json()


@pytest.mark.parametrize(
    "field, running, new",
    [
        ("admin", "127.0.0.1:0", "127.0.0.1:{free}"),
        ("workers", 1, 2),
    ],
)
def test_a_change_read_only_at_start_is_refused(backend, proxy, field, running, new):
    b = backend("web")
    cfg = one_service([b.addr], admin=True)
    cfg[field] = running
    p = proxy(cfg)
    changed = copy.deepcopy(cfg)
    changed[field] = new.format(free=closed_port()) if isinstance(new, str) else new
    changed["services"][0]["endpoints"] = []  # would answer 503 if this reload went through
    with pytest.raises(ConfigError) as err:
        p.reload(changed)
    assert f"{field}: changing it from {running!r} to {changed[field]!r} needs a restart" in str(err.value)
    assert p.config.model_dump()[field] == running
    assert admin_config(p)[field] == running
    assert admin_config(p)["services"][0]["endpoints"][0]["addr"] == b.addr
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "web"


def test_adding_an_admin_api_is_refused(backend, proxy):
    cfg = one_service([backend().addr])
    p = proxy(cfg)
    with pytest.raises(ConfigError, match=r"admin: changing it from None to '127.0.0.1:0' needs a restart"):
        p.reload({**cfg, "admin": "127.0.0.1:0"})
    assert p.config.admin is None and p.admin_address is None


def test_a_refusal_names_the_file_and_each_field(tmp_path, backend, proxy):
    cfg = one_service([backend().addr])
    cfg["workers"] = 1
    p = proxy(cfg)
    changed = copy.deepcopy(cfg)
    changed["workers"] = 2
    changed["admin"] = "127.0.0.1:0"
    path = tmp_path / "mesh-v2.json.yaml"
    path.write_text(json.dumps(changed))  # JSON is valid YAML
    with pytest.raises(ConfigError) as err:
        p.reload(path)
    msg = str(err.value)
    assert msg.startswith("cannot reload without a restart"), msg
    assert f"{path}: workers: changing it from 1 to 2 needs a restart" in msg
    assert f"{path}: admin: changing it from None to '127.0.0.1:0' needs a restart" in msg


def test_what_reload_can_apply_still_goes_through(backend, proxy):
    old, new = backend("old"), backend("new")
    cfg = one_service([old.addr], admin=True)
    cfg["workers"] = 1
    cfg["listeners"][0]["header_read_timeout"] = "30s"
    p = proxy(cfg)
    changed = copy.deepcopy(cfg)
    changed["services"][0]["endpoints"] = [{"addr": new.addr}]
    changed["zone"] = "zone-b"
    changed["listeners"][0]["header_read_timeout"] = "30000ms"  # the same timeout, written otherwise
    p.reload(changed)
    assert httpx.get(p.url("outbound")).headers["x-backend"] == "new"
    assert admin_config(p)["zone"] == "zone-b"
