"""The native module's stubs match it and document it: mypy's stubtest
compares every name, signature and class in `_core.pyi` with `meshcore._core`,
and every function and class there says what it does."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import meshcore

STUBS = Path(meshcore.__file__).parent / "_core.pyi"


def test_stubs_match_the_native_module():
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "meshcore._core"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_native_function_and_class_is_documented():
    tree = ast.parse(STUBS.read_text())
    undocumented = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node) is None
    ]
    assert undocumented == []
