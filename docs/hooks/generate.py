"""mkdocs hook: the parts of the docs that come from the code, made at build time so that
they cannot drift. A page asks for one with a comment on a line of its own:

    <!-- generated: config -->        every config table and field (the pydantic models)
    <!-- generated: cli -->           every command's --help (the CLI's own parser)
    <!-- generated: admin-api -->     every admin route (the admin API's OpenAPI document)
    <!-- readme: SECTION TITLE -->    that section of the README (whose examples its tests run)
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (generated|readme): (.+?) -->$", re.M)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def fill(match: re.Match[str]) -> str:
        kind, what = match.group(1), match.group(2).strip()
        if kind == "readme":
            return readme_section(what)
        if what not in GENERATED:
            raise ValueError(f"{page.file.src_path}: no generated part named {what!r}")
        return GENERATED[what]()

    return MARKER.sub(fill, markdown)


# -- the README's sections --


def readme_section(title: str) -> str:
    """The body of the README section headed `title`, down to the next heading of its level or
    above; links into docs/ point at the pages, links to other repository files become names."""
    lines = (ROOT / "README.md").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(title)}", line)]
    if len(starts) != 1:
        raise ValueError(f"README.md has {len(starts)} sections titled {title!r}")
    level = len(lines[starts[0]]) - len(lines[starts[0]].lstrip("#"))
    body: list[str] = []
    fenced = False  # a "# comment" in a code block is not a heading
    for line in lines[starts[0] + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        depth = len(line) - len(line.lstrip("#"))
        if not fenced and 0 < depth <= level and line[depth : depth + 1] == " ":
            break
        body.append(line)
    text = "\n".join(body)
    text = re.sub(r"\]\(docs/([^)]+)\)", r"](\1)", text)
    return re.sub(r"\[([^\]]+)\]\((?!https?:|#)([^)]+)\)", r"\1 (`\2`)", text)


# -- the configuration --


def config_reference() -> str:
    from meshcore.config_cli import json_schema

    schema = json_schema()
    defs = schema["$defs"]
    tables = {"Config": schema, **defs}
    where: dict[str, list[str]] = {"Config": ["(top level)"]}
    order = ["Config"]
    for name in order:  # grows as tables are found: breadth first, in field order
        for field, spec in tables[name]["properties"].items():
            for ref, many in _refs(spec):
                prefix = "" if name == "Config" else where[name][0].strip("[]") + "."
                path = f"[[{prefix}{field}]]" if many else f"[{prefix}{field}]"
                where.setdefault(ref, []).append(path)
                if ref not in order:
                    order.append(ref)
    out = [
        "Each table below is one pydantic model of `meshcore.config`; the same models validate a "
        "config when it is loaded and give `meshcore config schema` its JSON Schema. Durations are "
        'strings such as `"300ms"`, `"10s"` or `"5m"`, or a number of seconds.',
        "",
    ]
    for name in order:
        table = tables[name]
        heading = (
            "The top level" if name == "Config" else f"{name}: " + ", ".join(f"`{p}`" for p in where[name])
        )
        out += [f"## {heading} {{ #{name.lower()} }}", "", _one_line(table.get("description", "")), ""]
        out += ["| field | type | default | what it is |", "|---|---|---|---|"]
        required = set(table.get("required", []))
        for field, spec in table["properties"].items():
            default = "required" if field in required else _default(spec)
            cells = [f"`{field}`", _type(spec), default, _one_line(spec.get("description", ""))]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _refs(spec: dict[str, Any]) -> list[tuple[str, bool]]:
    """The tables a field holds: (model name, whether it is a list of them)."""
    found = []
    if "$ref" in spec:
        found.append((spec["$ref"].rsplit("/", 1)[1], False))
    if spec.get("type") == "array" and "$ref" in spec.get("items", {}):
        found.append((spec["items"]["$ref"].rsplit("/", 1)[1], True))
    for option in spec.get("anyOf", []):
        found += _refs(option)
    return found


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "enum" in spec:
        return " or ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    options = [o for o in spec.get("anyOf", []) if o.get("type") != "null"]
    if options:
        if sorted(str(o.get("type")) for o in options) == ["number", "string"]:
            return "duration"  # the only string-or-seconds fields
        return " or ".join(_type(o) for o in options)
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {_type(spec.get('items', {}))}"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"table of {_type(spec['additionalProperties'])}"
    bounds = [f"≥ {spec['minimum']}"] if "minimum" in spec else []
    bounds += [f"> {spec['exclusiveMinimum']}"] if "exclusiveMinimum" in spec else []
    if "maximum" in spec and spec["maximum"] < 2**31:
        bounds.append(f"≤ {spec['maximum']}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _default(spec: dict[str, Any]) -> str:
    if "default" not in spec:
        return "required"
    value = spec["default"]
    if value is None:
        return "none"
    text = json.dumps(value)
    return f"`{text}`" if len(text) <= 24 else "see its table"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the command line --


def cli_reference() -> str:
    from meshcore.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal; the page is fixed
    out = []
    for parser in _commands(build_parser()):
        out += [f"## {parser.prog}", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += _commands(sub)
    return found


# -- the admin API --


def admin_api_reference() -> str:
    from meshcore import __version__
    from meshcore.admin.api import ROUTES
    from meshcore.admin.openapi import describe

    document = describe(ROUTES, title="meshcore admin API", version=__version__)
    out = [f"OpenAPI {document['openapi']}; a running proxy serves this document at `GET /openapi.json`.", ""]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            if method == "head":
                continue  # every GET answers HEAD too
            out += [f"## {method.upper()} {path}", "", op["summary"], ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            for param in op.get("parameters", []):
                where = param.get("in", "query")
                out.append(f"- `{param['name']}` ({where}): {_one_line(param.get('description', ''))}")
            if op.get("parameters"):
                out.append("")
            out += ["| status | meaning |", "|---|---|"]
            for code, response in op["responses"].items():
                out.append(f"| {code} | {_one_line(response.get('description', ''))} |")
            out.append("")
    return "\n".join(out)


GENERATED = {"config": config_reference, "cli": cli_reference, "admin-api": admin_api_reference}
