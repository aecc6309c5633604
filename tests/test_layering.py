"""The house has floors: no two top-level modules import each other, directly or round
a loop, in the Rust core (`src/`) or in the Python package. A cycle means a seam is in
the wrong place (as `ConnContext` in `http/proxy.rs` once was)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUST_USE = re.compile(r"\bcrate::(\w+)")
# A test module at the end of a file (`#[cfg(test)] mod tests { ... }`) may reach anywhere.
RUST_TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod \w+\s*\{")
# The module root, and the fuzz drivers (built only for tests and fuzzing), reach everywhere.
RUST_OUTSIDE = {"lib", "fuzzing"}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def rust_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in (ROOT / "src").rglob("*.rs"):
        top = path.relative_to(ROOT / "src").parts[0].removesuffix(".rs")
        if top in RUST_OUTSIDE or path.stem.endswith("_tests"):
            continue
        text = RUST_TESTS.split(path.read_text())[0]
        for used in RUST_USE.findall(text):
            if used != top:
                edges.setdefault(top, set()).add(used)
    return edges


def python_edges() -> dict[str, set[str]]:
    package = ROOT / "python" / "meshcore"
    edges: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).parts
        top = parts[0].removesuffix(".py")
        depth = len(parts) - 1  # how many packages deep the module sits
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level <= depth:
                        continue  # within the same top-level package
                    # Up to the package root: `from ..errors import X`, `from . import _core`.
                    targets = [node.module] if node.module else [alias.name for alias in node.names]
                elif node.module and node.module.startswith("meshcore."):
                    targets = [node.module.removeprefix("meshcore.")]
            elif isinstance(node, ast.Import):
                targets = [
                    a.name.removeprefix("meshcore.") for a in node.names if a.name.startswith("meshcore.")
                ]
            for target in targets:
                used = target.split(".")[0]
                if used and used != top:
                    edges.setdefault(top, set()).add(used)
    return edges


@pytest.mark.parametrize("edges", [rust_edges, python_edges], ids=["rust", "python"])
def test_no_import_cycles_between_top_level_modules(edges):
    graph = edges()
    assert len(graph) > 5, "the import scan found too little to judge"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
