"""`meshcore config schema` and `meshcore config init`: the schema comes from the models that
validate configs, so every example config validates against it; starter configs load, check and
serve as their comments say."""

from __future__ import annotations

import json
import re
import shlex
import ssl
import subprocess
from pathlib import Path

import httpx
import jsonschema
import pytest
import tomllib

from conftest import MESHCORE, require_tool
from meshcore.backend import Backend

ROOT = Path(__file__).resolve().parent.parent


def meshcore(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCORE, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    done = meshcore("config", "schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def example_configs() -> dict[str, dict]:
    """Every proxy config the project shows: the README's files and the starter configs."""
    found = {}
    text = (ROOT / "README.md").read_text()
    for name, body in re.findall(r"<!-- file: (\S+\.toml) -->\n```toml\n(.*?)```", text, re.S):
        if "[[listeners]]" in body:
            found[f"README {name}"] = tomllib.loads(body)
    for path in (ROOT / "python" / "meshcore" / "starters").glob("*.toml"):
        found[f"starter {path.name}"] = tomllib.loads(path.read_text())
    return found


def test_every_example_config_validates_against_the_schema(validator):
    examples = example_configs()
    assert len(examples) >= 4, sorted(examples)
    for name, config in examples.items():
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(config)]
        assert errors == [], name


def test_the_schema_refuses_what_the_loader_refuses(validator):
    good = {"listeners": [{"name": "web", "bind": "127.0.0.1:8000"}]}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "listners": []}), "an unknown field"
    assert not validator.is_valid({"listeners": [{"name": "web", "bind": 8000}]}), "a wrong type"
    assert not validator.is_valid({**good, "policy": {"default": "allow-all"}}), "a value not allowed"


def test_every_table_and_field_is_described_for_editors_and_the_reference(validator):
    schema = validator.schema
    tables = {"Config": schema, **schema["$defs"]}
    undescribed = [name for name, table in tables.items() if not table.get("description")]
    undescribed += [
        f"{name}.{field}"
        for name, table in tables.items()
        for field, spec in table.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert undescribed == [], "give each a docstring in python/meshcore/config.py"
    listener = schema["$defs"]["Listener"]["properties"]
    assert "slowloris" in listener["header_read_timeout"]["description"]


def test_a_sidecar_starter_checks_once_its_identity_is_made_as_its_comments_say(tmp_path, validator):
    assert meshcore("config", "init", "sidecar", "--out", "mesh.toml", cwd=tmp_path).returncode == 0
    text = (tmp_path / "mesh.toml").read_text()
    refused = meshcore("check", "mesh.toml", cwd=tmp_path)
    assert refused.returncode == 1 and "trust" in refused.stderr.lower(), refused
    for line in re.findall(r"^#   (meshcore identity .*)$", text, re.M):
        assert meshcore(*line.split()[1:], cwd=tmp_path).returncode == 0, line
    checked = meshcore("check", "mesh.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    again = meshcore("config", "init", "sidecar", "--out", "mesh.toml", cwd=tmp_path)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert meshcore("config", "init", "sidecar").stdout == text, "stdout without --out"


def test_a_scripted_starter_serves_with_its_plugin(tmp_path):
    assert meshcore("config", "init", "scripted", "--out", "proxy.toml", cwd=tmp_path).returncode == 0
    assert (tmp_path / "plugin.py").exists()
    config = tomllib.loads((tmp_path / "proxy.toml").read_text())
    api, site = Backend("api"), Backend("site")
    try:
        config["services"][0]["endpoints"][0]["addr"] = api.addr
        config["services"][1]["endpoints"][0]["addr"] = site.addr
        config["listeners"][0]["bind"] = "127.0.0.1:0"
        config.pop("admin")
        (tmp_path / "proxy.json").write_text(json.dumps(config))
        from meshcore import Proxy
        from meshcore.config import load

        with Proxy(load(tmp_path / "proxy.json")) as p:
            assert httpx.get(p.url("web", "/api/x")).status_code == 401, "the plugin wants a key"
            keyed = httpx.get(p.url("web", "/api/x"), headers={"x-api-key": "k"})
            assert keyed.status_code == 200 and keyed.headers["x-served-by"] == "meshcore"
            plain = httpx.get(p.url("web", "/"))
            assert plain.status_code == 200 and "x-served-by" not in plain.headers, "other routes: no hook"
    finally:
        api.stop()
        site.stop()


def test_an_edge_starter_serves_https_once_its_certificate_is_made_as_its_comments_say(tmp_path):
    require_tool("openssl", "openssl")
    assert meshcore("config", "init", "edge", "--out", "edge.toml", cwd=tmp_path).returncode == 0
    text = (tmp_path / "edge.toml").read_text()
    refused = meshcore("check", "edge.toml", cwd=tmp_path)
    assert refused.returncode == 1 and "listeners[0].certificate.cert: cannot read" in refused.stderr, refused
    for line in re.findall(r"^#   (openssl .*)$", text, re.M):
        made = subprocess.run(shlex.split(line), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    checked = meshcore("check", "edge.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

    # Served on loopback ports, with its services on backends of ours.
    config = tomllib.loads(text)
    backends = [Backend("api"), Backend("web-1"), Backend("web-2")]
    try:
        addrs = iter(b.addr for b in backends)
        for service in config["services"]:
            for endpoint in service["endpoints"]:
                endpoint["addr"] = next(addrs)
        for listener in config["listeners"]:
            listener["bind"] = "127.0.0.1:0"
        config.pop("admin")
        (tmp_path / "edge.json").write_text(json.dumps(config))
        from meshcore import Proxy
        from meshcore.config import load

        with Proxy(load(tmp_path / "edge.json")) as p:
            _, port = p.addresses["edge"]
            context = ssl.create_default_context(cafile=str(tmp_path / "edge.crt"))
            site = httpx.get(f"https://localhost:{port}/", verify=context)
            assert site.status_code == 200 and site.text.startswith("hello from web-")
            assert site.headers["strict-transport-security"] == "max-age=31536000"
            api = httpx.get(
                f"https://localhost:{port}/v1", headers={"host": "api.example.com"}, verify=context
            )
            assert api.status_code == 200 and api.text.startswith("hello from api ")
            plain = httpx.get(p.url("http", "/page"))
            assert plain.status_code == 308 and plain.headers["location"].startswith("https://")
    finally:
        for b in backends:
            b.stop()
