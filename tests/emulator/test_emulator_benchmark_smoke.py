"""``python -m mljob.testing.benchmark`` keeps working: the operator's benchmarks stand on its numbers.

No timing is asserted (the numbers are for people); only that every create over HTTP is answered
201 and seen on the watch, and that a selector LIST finds exactly its objects among thousands.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_emulator_benchmark_runs_at_thousands_of_objects():
    result = subprocess.run(
        [sys.executable, "-m", "mljob.testing.benchmark", "--count", "300", "--existing", "50", "3000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["existing"] for r in rows] == [50, 3000]
    for row in rows:
        assert row["ok"] == 300  # every create answered 201 and its watch event arrived
        assert row["selector_list_items"] == sum(1 for i in range(row["existing"]) if i % 7 == 3)
        for key in ("http_creates_per_s", "http_creates_watched_per_s", "store_creates_per_s", "selector_list_ms"):
            assert row[key] > 0, row
