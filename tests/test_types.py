"""The package type-checks under `mypy --strict` (configured in pyproject.toml's [tool.mypy]):
every public function is annotated, and the stubs of the native module are used as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# A fresh checkout has no mypy cache: the first run reads every dependency (about 40 s here).
@pytest.mark.timeout(600)
def test_the_package_passes_mypy_strict():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
