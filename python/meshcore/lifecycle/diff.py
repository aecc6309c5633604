"""What changed between two config versions: a unified diff of each one's validated config
(defaults filled in) as sorted, indented JSON, so formatting, key order and the file format
(TOML, YAML, JSON) never show as changes and a default made explicit does not either."""

from __future__ import annotations

import difflib
import json
import time
from typing import Any

__all__ = ["canonical_json", "render_diff"]


def canonical_json(config: dict[str, Any]) -> str:
    """The form both the diff and the version hash are taken of."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _label(version: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version["applied_at"]))
    bad = f", bad: {version['bad']}" if version.get("bad") else ""
    origin = f"{version['source']} by {version['who']}"
    return f"version {version['version']} ({version['hash'][:19]}, {origin}, {when}{bad})"


def render_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """`a` and `b` are versions as GET /config/history/{version} returns them (with "config").
    Same config: one line saying so."""
    if a["hash"] == b["hash"]:
        return f"versions {a['version']} and {b['version']} have the same config ({a['hash'][:19]})\n"
    lines = [json.dumps(v["config"], sort_keys=True, indent=2).splitlines(keepends=True) for v in (a, b)]
    body = difflib.unified_diff(lines[0], lines[1], fromfile=_label(a), tofile=_label(b), n=3)
    return "".join(line if line.endswith("\n") else line + "\n" for line in body)
