"""`mljob get` and `mljob describe` show a job's training progress, read back from the real API server.

The progress is written into the job's status subresource as the operator's endpoint writes it (the helper is
test_e2e_ui's), so the CLI's models are checked against the object the API server keeps, not a hand-made one.
"""

from __future__ import annotations

from harness import E2EJob, Forever, Kube, Role
from test_e2e_client import mljob
from test_e2e_ui import report_progress


def test_get_and_describe_show_what_the_job_reported(backend: Kube, e2e):
    ns = backend.namespace
    backend.submit(E2EJob("busy", "pytorch", {"Master": Role(1, (Forever(),))}))
    backend.submit(E2EJob("quiet", "pytorch", {"Master": Role(1, (Forever(),))}))
    backend.wait_phase("busy", "Running")
    latest = [{"name": "loss", "value": "0.42"}, {"name": "acc", "value": "a"}]
    fields = report_progress(
        backend, "busy",
        {"step": 100, "totalSteps": 1000, "metrics": [{"name": "loss", "value": "0.9"}]},
        {"step": 420, "totalSteps": 1000, "metrics": latest},
    )  # fmt: skip

    table = mljob(e2e, "get", "-n", ns)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "FRAMEWORK", "PHASE", "READY", "RESTARTS", "PROGRESS", "ETA", "AGE"]
    by_name = {row.split()[0]: row for row in rows}
    column, age = header.index("PROGRESS"), header.index("AGE")
    assert by_name["busy"][column:age].split() == ["42%", *([fields["eta"]] if fields["eta"] else [])]
    assert by_name["quiet"][column:age].strip() == ""

    described = mljob(e2e, "describe", "busy", "-n", ns)
    assert described.returncode == 0, described.stderr
    for needle in ("Progress:", "  Percent:     42%", "  Step:        420/1000", "  Last report: ", "    loss  0.42",
                   "    acc   a"):  # fmt: skip
        assert needle in described.stdout, (needle, described.stdout)
    quiet = mljob(e2e, "describe", "quiet", "-n", ns)
    assert quiet.returncode == 0, quiet.stderr
    assert "Progress:" not in quiet.stdout
