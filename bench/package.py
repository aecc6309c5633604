#!/usr/bin/env python3
"""What the installed package costs: the wheel's size and the time `import meshcore` takes in
a fresh interpreter, against the same interpreter doing nothing (the median of --runs each).

    python bench/package.py [--wheel target/dist/meshcore-*.whl] [--runs 21]

Runs on whatever `python` imports meshcore from: scripts/test's virtualenv
(target/test-venv/bin/python) measures the installed wheel.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

IMPORTS = {
    "python -c pass": "pass",
    "import meshcore": "import meshcore",
    "meshcore.Proxy (loads pydantic)": "import meshcore; meshcore.Proxy",
}


def median_ms(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", help="the wheel to size (default: target/dist/meshcore-*.whl)")
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    wheels = [args.wheel] if args.wheel else glob.glob("target/dist/meshcore-*.whl")
    for wheel in wheels:
        path = Path(wheel)
        unpacked = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, {unpacked / 2**20:.1f} MiB installed")
    baseline = None
    for what, code in IMPORTS.items():
        ms = median_ms(code, args.runs)
        if baseline is None:
            baseline = ms
            print(f"{what:34} {ms:7.1f} ms")
        else:
            print(f"{what:34} {ms:7.1f} ms  (+{ms - baseline:.1f} ms over the bare interpreter)")


if __name__ == "__main__":
    main()
