"""What `pip install meshcore` gives (#22): a lazy `import meshcore`, and, when scripts/test runs
the suite against the wheel it built, that wheel (abi3, without bench/ and tests/) is what the
tests import."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import meshcore

ROOT = Path(__file__).resolve().parent.parent
# Set by scripts/test when the suite runs in a fresh virtualenv against the wheel it built.
WHEEL = os.environ.get("MESHCORE_TEST_WHEEL")
installed = pytest.mark.skipif(not WHEEL, reason="scripts/test sets MESHCORE_TEST_WHEEL when testing a wheel")

# What `import meshcore` must not load: pydantic (the config models), the admin server, the
# identity service, the control plane and what they run on.
HEAVY = ("pydantic", "starlette", "uvicorn", "grpc", "cryptography", "yaml", "rich")
HEAVY_OURS = ("meshcore.config", "meshcore.proxy", "meshcore.admin", "meshcore.identity", "meshcore.control")


def imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY_OURS)]


def test_import_meshcore_loads_no_models_servers_or_identity():
    assert heavy(imported_after("import meshcore")) == []


def test_the_command_line_parser_loads_no_models_or_servers():
    # `meshcore --help` and a mistyped command's usage message come before any of them is needed.
    modules = imported_after("from meshcore.cli import build_parser\nbuild_parser()")
    commands = ("meshcore.identity", "meshcore.control", "meshcore.config_cli")  # their argparse parts
    heavy_for_help = [m for m in heavy(modules) if not m.startswith(commands)]
    assert "meshcore.cli" in modules and heavy_for_help == []


def test_the_public_names_load_on_first_use():
    modules = imported_after("import meshcore\nmeshcore.Proxy")
    assert "meshcore.proxy" in modules and "pydantic" in modules
    # Each name is the class its module defines, and errors are the native module's own.
    from meshcore.config import Config
    from meshcore.plugins import Request

    assert meshcore.Config is Config and meshcore.Request is Request
    assert meshcore.ConfigError is meshcore._core.ConfigError
    assert set(meshcore.__all__) <= set(dir(meshcore))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        meshcore.Nope  # noqa: B018


@installed
def test_the_suite_imports_the_installed_wheel_not_the_source_tree():
    package = Path(meshcore.__file__).resolve().parent
    assert "site-packages" in package.parts, package
    assert not package.is_relative_to(ROOT / "python")
    # No Rust toolchain to fall back on: the wheel is all there is.
    for tool in ("cargo", "rustc", "maturin"):
        assert not any(Path(d, tool).exists() for d in os.environ["PATH"].split(os.pathsep) if d), tool


@installed
def test_the_wheel_is_one_abi3_wheel_with_the_package_and_nothing_else():
    wheel = Path(WHEEL)
    assert wheel.name.startswith(f"meshcore-{meshcore.__version__}-cp39-abi3-"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"meshcore", f"meshcore-{meshcore.__version__}.dist-info"}, tops
    for needed in ("meshcore/_core.abi3.so", "meshcore/_core.pyi", "meshcore/py.typed"):
        assert needed in names
    starters = {n for n in names if n.startswith("meshcore/starters/") and n.endswith(".toml")}
    ours = (ROOT / "python/meshcore/starters").glob("*.toml")
    assert starters == {f"meshcore/starters/{p.name}" for p in ours}
    assert not [n for n in names if n.startswith(("bench/", "tests/")) or "/__pycache__/" in n]


@installed
def test_the_sdist_holds_what_a_build_from_source_needs():
    import tarfile

    sdist = Path(WHEEL).with_name(f"meshcore-{meshcore.__version__}.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "src/lib.rs", "python/meshcore/__init__.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("target/", "bench/", "tests/", "fuzz/"))]


@installed
def test_bench_package_reports_the_wheel_size_and_import_time():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/package.py"), "--wheel", WHEEL, "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{Path(WHEEL).name}: " in done.stdout and " MiB installed" in done.stdout
    assert "import meshcore" in done.stdout and "over the bare interpreter" in done.stdout
