"""Zipapp benchmark: build dist-like `sentinel-gw.pyz` with scripts/build-zipapp.sh (into a
temporary folder: the checked-in dist/ is left alone), its size (issue 8: <= 300 KB) and the wall
time of `python3 sentinel-gw.pyz --version` (issue 8: < 150 ms, median of 10), interleaved with
`python3 -c pass`, the interpreter's own start, as the reference.

`python3` is the real interpreter behind this venv (not a pyenv shim or the venv, whose wrappers
and site-packages would add their own start-up cost).

    python bench/bench_zipapp.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, TABLE_HEAD, Row, median, progress, ratios

PYTHON3 = os.path.realpath(sys.executable)


def build(out: Path) -> Path:
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-zipapp.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"build-zipapp.sh failed:\n{done.stdout}\n{done.stderr}")
    return out


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd="/")
    return time.perf_counter() - t0


def zipapp_rows(tmp: Path, runs: int) -> list[Row]:
    pyz = build(tmp / "sentinel-gw.pyz")
    size = pyz.stat().st_size
    version = [PYTHON3, str(pyz), "--version"]
    bare = [PYTHON3, "-c", "pass"]
    wall(version)  # warm-up: page cache
    wall(bare)
    app: list[float] = []
    ref: list[float] = []
    for _ in range(runs):
        app.append(wall(version) * 1e3)
        ref.append(wall(bare) * 1e3)
    progress(
        f"zipapp: {size} bytes, --version median {median(app):.0f} ms, python3 -c pass {median(ref):.0f} ms"
    )
    return [
        Row(
            "8. zipapp size (scripts/build-zipapp.sh)",
            "KB",
            [size / 1000],
            direct_label="n/a (absolute)",
            target="≤ 300 KB",
            passed=size <= 300_000,
            digits=4,
        ),
        Row(
            f"8. zipapp `--version` wall time, median of {runs} (direct = `python3 -c pass`)",
            "ms",
            app,
            ref,
            ratios(app, ref),
            "< 150 ms",
            median(app) < 150,
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = zipapp_rows(Path(d), args.runs)
    print("\n".join([*TABLE_HEAD, *(row.markdown() for row in rows)]))


if __name__ == "__main__":
    main()
