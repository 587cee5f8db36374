"""``bench/launch.py --smoke`` keeps working (what CI runs); no timing is asserted, only that it runs."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "launch.py"


def test_launch_benchmark_smoke_runs():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["framework", "replicas", "check"]
    rows = [line.split() for line in lines[3:]]
    assert [(r[0], r[1]) for r in rows] == [("pytorch", "1"), ("pytorch", "4")]
    assert all(float(cell) > 0 for r in rows for cell in r[2:])  # every phase was measured
