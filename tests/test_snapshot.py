"""The document Python hands the core (`meshcore.snapshot`): complete, as typed, and the core
has no defaults to fall back on, so a missing field is an error naming it (#16)."""

from __future__ import annotations

import json
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from meshcore import ConfigError, _core, snapshot
from meshcore.config import load

# Every optional section once, so that every key of the schema appears.
RICH = {
    "zone": "zone-a",
    "cluster": "east",
    "costs": {"zone-b": 1},
    "workers": 1,
    "listeners": [
        {"name": "outbound", "bind": "127.0.0.1:0"},
        {"name": "tcp", "bind": "127.0.0.1:0", "protocol": "opaque", "service": "web"},
        {"name": "inbound", "bind": "127.0.0.1:0"},
    ],
    "services": [
        {"name": "web", "endpoints": [{"addr": "127.0.0.1:8081", "zone": "zone-a", "cluster": "east"}]},
        {"name": "plain", "breaker": False},
    ],
    "routes": [
        {
            "listener": "outbound",
            "name": "api",
            "host": "web.local",
            "path_prefix": "/api",
            "headers": {"x-canary": "1"},
            "timeout": "2s",
            "response_timeout": "1s",
            "retry": {"on": ["5xx"]},
            "request_headers": {"add": {"x-a": "1"}, "set": {"x-b": "2"}, "remove": ["x-c"]},
            "response_headers": {"remove": ["server"]},
            "rewrite": {"path_prefix": "/"},
            "rate_limit": {"rps": 10, "burst": 5},
            "backends": [{"service": "web", "weight": 3}],
        },
        {"listener": "outbound", "path_prefix": "/old", "redirect": {"status": 301, "path": "/new"}},
        {"listener": "outbound", "direct_response": {"status": 404, "body": "no"}},
    ],
    "policy": {"default": "audit", "rules": [{"listener": "inbound", "networks": ["127.0.0.0/8"]}]},
}


def document() -> snapshot.Snapshot:
    config = load(json.loads(json.dumps(RICH)))
    doc = config.to_core(["api"])
    # As Proxy fills it; the core only reads the PEM text when it starts.
    doc["identity"] = {"trust_anchors_pem": "x", "cert_pem": "x", "key_pem": "x", "trust_domains": []}
    return doc


def typed_dict(hint: Any) -> Any:
    """The TypedDict a hint holds (directly, in a list or as Optional), or None."""
    if get_origin(hint) in (list, Union):
        return next((t for t in map(typed_dict, get_args(hint)) if t is not None), None)
    return hint if isinstance(hint, type) and hasattr(hint, "__total__") else None


def mismatches(value: Any, schema: Any, at: str) -> list[str]:
    """Where `value` has other keys than the TypedDict `schema` says, recursively."""
    hints = get_type_hints(schema)
    out = []
    if set(value) != set(hints):
        out.append(f"{at or 'top'}: extra {set(value) - set(hints)}, missing {set(hints) - set(value)}")
    for key, hint in hints.items():
        inner, item = typed_dict(hint), value.get(key)
        if inner is None or item is None:
            continue
        for i, element in enumerate(item if isinstance(item, list) else [item]):
            out += mismatches(element, inner, f"{at}.{key}[{i}]" if isinstance(item, list) else f"{at}.{key}")
    return out


def test_the_document_has_exactly_the_schema_keys():
    assert mismatches(document(), snapshot.Snapshot, "") == []


def test_the_core_accepts_the_document():
    _core.ProxyCore(json.dumps(document()))


def field_paths(value: Any, schema: Any, at: tuple = ()) -> list[tuple]:
    """The path to every field of the schema in `value` (not the keys of maps such as costs)."""
    paths = []
    for key, hint in get_type_hints(schema).items():
        paths.append((*at, key))
        inner, item = typed_dict(hint), value[key]
        if inner is None or item is None:
            continue
        if isinstance(item, list):
            paths += [p for i, element in enumerate(item) for p in field_paths(element, inner, (*at, key, i))]
        else:
            paths += field_paths(item, inner, (*at, key))
    return paths


@pytest.mark.parametrize(
    "path", field_paths(document(), snapshot.Snapshot), ids=lambda p: ".".join(map(str, p))
)
def test_a_missing_field_is_refused_by_name(path):
    doc: Any = document()
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    with pytest.raises(ConfigError, match=f"missing field `{path[-1]}`"):
        _core.ProxyCore(json.dumps(doc))
