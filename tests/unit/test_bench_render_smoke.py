"""``bench/render.py --smoke`` keeps working (what CI runs); no timing is asserted, only that it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "render.py"


def test_render_benchmark_smoke_runs():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1].split()
    assert header == [
        "framework", "replicas", "objects", "seconds", "objects/s", "peak", "memory", "yaml-seconds",
        "pure-python-yaml-seconds",
    ]  # fmt: skip
