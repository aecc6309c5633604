"""`meshcore config schema` and `meshcore config init`: the config's JSON Schema, from the same
pydantic models that validate a config (so it cannot drift), and commented starter configs."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

# kind -> (the config's file, and files written beside it: starter file -> name)
STARTERS: dict[str, tuple[str, dict[str, str]]] = {
    "sidecar": ("sidecar.toml", {}),
    "edge": ("edge.toml", {}),
    "scripted": ("scripted.toml", {"scripted_plugin.py": "plugin.py"}),
}


def add_config_file_commands(verbs: Any) -> None:
    """Adds `schema` and `init` beside the `config` verbs of a running proxy's history."""
    schema = verbs.add_parser("schema", help="print the config's JSON Schema, for editors checking TOML/YAML")
    schema.set_defaults(func=cmd_schema)
    init = verbs.add_parser("init", help="write a commented starter config")
    kinds = (
        "sidecar: inbound mTLS and outbound; edge: HTTPS for clients outside the mesh; "
        "scripted: routes with a Python plugin"
    )
    init.add_argument("kind", choices=sorted(STARTERS), help=kinds)
    init.add_argument("--out", metavar="FILE", help="write here (its companions beside it); default: stdout")
    init.set_defaults(func=cmd_init)


def json_schema() -> dict[str, Any]:
    from .config import Config

    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meshcore config"
    return schema


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def starter(name: str) -> str:
    return resources.files("meshcore.starters").joinpath(name).read_text(encoding="utf-8")


def cmd_init(args: argparse.Namespace) -> int:
    config, companions = STARTERS[args.kind]
    if args.out is None:
        print(starter(config), end="")
        for name in companions.values():
            print(f"meshcore: the config uses {name}: write it with --out FILE", file=sys.stderr)
        return 0
    out = Path(args.out)
    targets = {out: starter(config), **{out.parent / name: starter(src) for src, name in companions.items()}}
    present = [str(p) for p in targets if p.exists()]
    if present:
        print(f"meshcore: refusing to overwrite {', '.join(present)}", file=sys.stderr)
        return 1
    for path, text in targets.items():
        path.write_text(text, encoding="utf-8")
        print(f"meshcore: wrote {path}")
    return 0
