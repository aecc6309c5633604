"""The documentation (docs/, built by mkdocs in scripts/test) says what the code does: every
config block validates, every command parses with the CLI (or a test runs it), the quick start
runs as written, and the metrics reference is what a proxy serves."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import httpx
import jsonschema
import tomllib
import yaml

from conftest import closed_port
from mesh_helpers import API, addr, identity_files, inbound_config, issue, make_ca, outbound_config
from meshcore.cli import build_parser
from meshcore.config import Config
from meshcore.config_cli import json_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "hooks"))
import generate  # noqa: E402  (the mkdocs hook: the pages as the site renders them)

# The `<!-- run: NAME -->` blocks, and the test that runs each as written.
RUN_BY = {
    "setup": "test_readme_examples.py::test_identity_and_policy_example",
    "calls": "test_readme_examples.py::test_identity_and_policy_example",
    "pair-identities": "test_docs.py::test_the_quick_start_pair_runs_as_written",
    "pair-calls": "test_docs.py::test_the_quick_start_pair_runs_as_written",
}
BLOCK = re.compile(r"^(?:<!-- (run|file): (\S+) -->\n)?```(\w*)\n(.*?)^```", re.S | re.M)


def pages() -> dict[str, str]:
    """Each page's Markdown with the README sections it includes (the generated references are
    left out: they come from the code)."""

    def fill(match: re.Match[str]) -> str:
        return generate.readme_section(match.group(2)) if match.group(1) == "readme" else ""

    return {p.name: generate.MARKER.sub(fill, p.read_text()) for p in sorted(DOCS.glob("*.md"))}


def blocks(*languages: str) -> list[tuple[str, str, str, str, str]]:
    """(page, marker kind, marker name, language, body) of every fenced block in these languages."""
    return [
        (page, kind, name, lang, body)
        for page, text in pages().items()
        for kind, name, lang, body in BLOCK.findall(text)
        if lang in languages
    ]


def test_the_pages_have_config_and_command_blocks_to_check():
    assert len(blocks("toml", "yaml")) >= 6
    assert len(blocks("sh")) >= 10


def test_every_config_block_validates_against_the_schema_and_the_models(tmp_path):
    from meshcore.control.documents import read_document

    validator = jsonschema.Draft202012Validator(json_schema())
    for i, (page, _, name, lang, body) in enumerate(blocks("toml", "yaml")):
        where = f"{page}: {name or body[:40]!r}"
        data = tomllib.loads(body) if lang == "toml" else yaml.safe_load(body)
        if set(data) == {"services"}:  # a control plane's services document (`control serve --dir`)
            document = tmp_path / f"{i}.{lang}"
            document.write_text(body)
            assert read_document(document), where
            continue
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], where
        if "listeners" in data:  # a whole proxy config: the models' cross-checks too
            Config.model_validate(data)


def commands(body: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, `NAME="..."`
    assignments expanded where `$NAME` is used, and pipelines and lists split into commands."""
    text = re.sub(r"\\\n\s*", " ", body)
    variables: dict[str, str] = {}
    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, _, value = words[0].partition("=")
            variables[key] = value
            continue
        for key, value in variables.items():  # unquoted, as the shell splits it
            line = line.replace(f"${key}", value)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in (";", "&", "&&", "|", "||"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


def check_ours(argv: list[str]) -> bool:
    """True if `argv` is one of meshcore's commands and parses; False if it is another tool's."""
    if argv[0] == "meshcore" or argv[:3] == ["python", "-m", "meshcore"]:
        args = argv[1:] if argv[0] == "meshcore" else argv[3:]
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            assert e.code == 0, f"`{shlex.join(argv)}` does not parse"
        return True
    if argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
        return argv[2].startswith("meshcore.")
    if argv[0].startswith("./scripts/"):  # the project's own scripts (CI runs ./scripts/test)
        script = ROOT / argv[0]
        assert script.is_file() and os.access(script, os.X_OK), f"no script {argv[0]}"
        return True
    if argv[:2] == ["pip", "install"]:
        extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
        for target in argv[2:]:
            match = re.fullmatch(r"(meshcore|\.)(?:\[([\w,]+)\])?", target)
            assert match, f"`{shlex.join(argv)}`: installs something other than meshcore"
            assert set(filter(None, (match.group(2) or "").split(","))) <= extras, target
        return True
    return False


def test_every_command_parses_or_is_run_by_a_test():
    checked = 0
    for page, kind, name, _, body in blocks("sh"):
        for argv in commands(body):
            if check_ours(argv):
                checked += 1
            else:  # another tool's command: only in a block a test runs as written
                assert kind == "run" and name in RUN_BY, (
                    f"{page}: `{shlex.join(argv)}` is neither ours nor run"
                )
    assert checked >= 20


def test_every_run_block_has_its_test():
    runs = {name for _, kind, name, _, _ in blocks("sh") if kind == "run"}
    assert runs == set(RUN_BY)
    for test in set(RUN_BY.values()):
        module, _, function = test.partition("::")
        assert f"def {function}(" in (ROOT / "tests" / module).read_text(), test


def test_python_blocks_compile():
    found = blocks("python")
    assert found
    for page, _, _, _, body in found:
        compile(body, page, "exec")


def test_the_quick_start_pair_runs_as_written(namespace, tmp_path):
    text = pages()["quickstart.md"]
    files = {name: body for kind, name, _, body in BLOCK.findall(text) if kind == "file"}
    runs = {name: body for kind, name, _, body in BLOCK.findall(text) if kind == "run"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    ns = namespace([])
    for line in runs["pair-identities"].splitlines():
        ns.shell(line, tmp_path)
    out = [ns.shell(line, tmp_path) for line in runs["pair-calls"].splitlines()]
    # The app answered through both proxies; plaintext to the mTLS port was refused; the
    # inbound proxy counted the request its policy let in.
    assert out[3] == "hello from api (unknown) path=/hello\n"
    assert out[4] == "refused\n"
    assert out[5] == 'inbound_http_authz_allow_total{listener="inbound",rule="default:all-authenticated"} 1\n'


# -- the metrics reference --


def documented_families() -> dict[str, tuple[str, list[str]]]:
    """family -> (type, labels), from the table in docs/metrics.md."""
    found = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            labels = re.findall(r"`(\w+)`", cells[2])
            found[cells[0].strip("`")] = (cells[1], labels)
    return found


def served_families(text: str) -> dict[str, tuple[str, list[str]]]:
    """family -> (type, labels) from a /metrics page (a histogram's labels without `le`)."""
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    labels: dict[str, list[str]] = {name: [] for name in types}
    for name, inner in re.findall(r"^(\w+)\{(.*?)\} ", text, re.M):
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        keys = [k for k in re.findall(r'(\w+)="(?:[^"\\]|\\.)*"', inner) if k != "le"]
        labels[family] = keys
    return {name: (kind, labels[name]) for name, kind in types.items()}


def test_the_metrics_reference_is_what_a_proxy_with_every_feature_serves(tmp_path, backend, proxy):
    ca = make_ca(tmp_path / "ca")
    app = backend()
    inbound_cfg = inbound_config(
        identity_files(ca, *issue(ca, "ns/default/sa/api", tmp_path / "api")), app.addr
    )
    (tmp_path / "plugin.py").write_text("def on_request(req):\n    pass\n")
    inbound_cfg.update(
        admin="127.0.0.1:0",
        plugins=[{"path": str(tmp_path / "plugin.py")}],
        access_log={"path": str(tmp_path / "access.log")},
        tracing={"sampling": 1.0, "otlp": f"127.0.0.1:{closed_port()}"},
    )
    inbound = proxy(inbound_cfg)
    outbound = proxy(
        outbound_config(
            identity_files(ca, *issue(ca, "ns/default/sa/web", tmp_path / "web")),
            addr(inbound, "inbound"),
            API,
        )
    )
    assert httpx.get(outbound.url("outbound", "/x"), timeout=10).status_code == 200
    host, port = inbound.admin_address
    served = served_families(httpx.get(f"http://{host}:{port}/metrics", timeout=10).text)
    documented = documented_families()
    assert sorted(served) == sorted(documented), "families served and documented differ"
    for name, (kind, labels) in served.items():
        if labels:  # a family with no sample yet shows no labels
            assert (kind, labels) == documented[name], name
        else:
            assert kind == documented[name][0], name
