"""``bench/operator.py --smoke`` keeps working (what CI runs); no timing is asserted, only that it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "operator.py"


def test_operator_benchmark_smoke_runs_and_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr
    rows = dict(line.split("  ", 1) for line in result.stdout.splitlines()[1:] if "  " in line)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["jobs Succeeded"] == "3 / 3"
    for metric in ("jobs/s to Running", "API requests per job", "reconcile pass mean (ms)", "create pods"):
        assert metric in rows, result.stdout
    assert rows["create pods"].startswith("9 ")  # exactly the rendered pods: in-place restarts create none
