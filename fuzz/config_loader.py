#!/usr/bin/env python3
"""atheris target for the config loader: `meshcore.config.load`, then what
`Proxy()` does with a config that loads (`to_core()`, and the Rust core
parsing that document).

The only acceptable failure is meshcore's ConfigError from `load`; any other
exception (TypeError, KeyError, OverflowError, a Rust panic surfacing as
MeshcoreError, ...) is a finding, and so is a document the core refuses for
a config that loaded: Python is the one validator (#16), so whatever it
accepts the core must take.

The first byte's low two bits pick the input's form; the rest is:
  0  TOML text, loaded from a .toml file
  1  YAML text, loaded from a .yaml file
  2, 3  edits to a valid config dict with edits chosen by the rest of the bytes
     (replace a value anywhere with an odd one, drop a key, add one)

Run (see fuzz/README.md):
  python fuzz/config_loader.py fuzz/corpus/config_loader -max_total_time=30
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["meshcore.config", "meshcore.errors"]):
    from meshcore import _core
    from meshcore.config import load
    from meshcore.errors import ConfigError

# Every section, every kind of duration and address: edits start from here.
BASE = {
    "admin": "127.0.0.1:0",
    "zone": "zone-a",
    "cluster": "c1",
    "costs": {"zone-b": 5},
    "workers": 2,
    "policy": {
        "default": "audit",
        "rules": [
            {
                "name": "r",
                "listener": "inbound",
                "path_prefix": "/admin",
                "identities": ["spiffe://mesh.local/ns/a/sa/b"],
                "networks": ["10.0.0.0/8", "::1/128"],
            }
        ],
    },
    "listeners": [
        {"name": "outbound", "bind": "127.0.0.1:0", "protocol": "auto", "idle_timeout": "5m"},
        {
            "name": "inbound",
            "bind": "[::1]:0",
            "protocol": "http2",
            "direction": "inbound",
            "detect_timeout": 1.5,
            "header_read_timeout": "300ms",
            "max_connections": 10,
        },
    ],
    "routes": [
        {
            "listener": "outbound",
            "name": "main",
            "host": "*.web.local",
            "path_prefix": "/api",
            "headers": {"x-canary": "1"},
            "timeout": "10s",
            "response_timeout": "2s",
            "retry": {"on": ["5xx", "reset"], "limit": 2, "budget": 0.5, "ttl": "1m"},
            "request_headers": {"add": {"x-a": "1"}, "set": {"x-b": "2"}, "remove": ["x-c"]},
            "response_headers": {"remove": ["server"]},
            "rewrite": {"path_prefix": "/v2"},
            "rate_limit": {"rps": 10.5, "burst": 3},
            "backends": [{"service": "web", "weight": 90}, {"service": "web-v2", "weight": 10}],
        },
        {"listener": "outbound", "redirect": {"status": 308, "scheme": "https", "host": "x", "path": "/"}},
        {"listener": "inbound", "direct_response": {"status": 200, "body": "ok", "headers": {"a": "b"}}},
    ],
    "services": [
        {
            "name": "web",
            "balancer": "zonal",
            "protocol": "http1",
            "endpoints": [
                {"addr": "127.0.0.1:8081", "zone": "zone-a", "cluster": "c1"},
                {"addr": "[::1]:8082", "zone": "zone-b"},
            ],
            "connect_timeout": "1s",
            "idle_timeout": 90,
            "zonal": {"load_low": 0.5, "load_high": 1.5, "dwell": "1s"},
            "breaker": {"consecutive_failures": 3, "min_penalty": "1s", "max_penalty": "1m", "jitter": 0.1},
        },
        {"name": "web-v2", "endpoints": [{"addr": "127.0.0.1:8083"}], "breaker": False},
    ],
}

# Values that have broken loaders before: wrong types, limits, special floats.
ODD = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    2**64,
    -(2**63),
    10**30,
    0.0,
    -0.0,
    1e308,
    -1e308,
    1e-308,
    math.inf,
    -math.inf,
    math.nan,
    "",
    " ",
    "0",
    "-1",
    "inf",
    "nan",
    "1e400",
    "10s",
    "0ms",
    "1.5h",
    "99999999999999999999h",
    "1 s",
    "\u0661s",
    "\u00b2s",
    "127.0.0.1:0",
    "127.0.0.1:\u00b2",
    "[::1]:65536",
    "::1:80",
    "256.0.0.1:1",
    "spiffe://",
    "https://",
    "/",
    "*.",
    "*",
    "\x00",
    "a" * 300,
    [],
    [None],
    {},
    {"": None},
    {"name": "x"},
    [{}],
    [[]],
    b"bytes",
]

KEYS = sorted(
    {
        k
        for k in json.dumps(BASE).replace('"', " ").replace(":", " ").split()
        if k.isidentifier() and not k[0].isupper()
    }
)


def odd_value(fdp: atheris.FuzzedDataProvider):
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 1:
        return fdp.ConsumeInt(9)
    if kind == 2:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 3:
        return fdp.PickValueInList(KEYS)
    return copy.deepcopy(fdp.PickValueInList(ODD))


def containers(node, out):
    """Every dict and list in the document, with itself, depth first."""
    if isinstance(node, (dict, list)):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            containers(child, out)
    return out


def edited(fdp: atheris.FuzzedDataProvider) -> dict:
    doc = copy.deepcopy(BASE)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        nodes = containers(doc, [])
        node = nodes[fdp.ConsumeIntInRange(0, len(nodes) - 1)]
        action = fdp.ConsumeIntInRange(0, 3)
        if isinstance(node, dict):
            keys = list(node)
            if action == 3 or not keys:
                node[fdp.PickValueInList(KEYS + ["extra"])] = odd_value(fdp)
            elif action == 2:
                del node[fdp.PickValueInList(keys)]
            else:
                node[fdp.PickValueInList(keys)] = odd_value(fdp)
        elif node:
            i = fdp.ConsumeIntInRange(0, len(node) - 1)
            if action == 2:
                del node[i]
            elif action == 3:
                node.append(copy.deepcopy(node[i]))
            else:
                node[i] = odd_value(fdp)
    return doc


TMP = tempfile.mkdtemp(prefix="meshcore-fuzz-config-")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] & 3, data[1:]
    if mode < 2:
        path = os.path.join(TMP, "mesh.toml" if mode == 0 else "mesh.yaml")
        with open(path, "wb") as f:
            f.write(rest)
        source = path
    else:
        source = edited(atheris.FuzzedDataProvider(rest))
    try:
        config = load(source)
    except ConfigError:
        return  # the one exception a bad config may raise
    document = config.to_core(config.route_names()[:1])
    _core.ProxyCore(json.dumps(document))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
