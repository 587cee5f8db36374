"""`mljob get`'s PROGRESS and ETA columns and `mljob describe`'s Progress section, without a cluster.

The formatting is tested as the pure functions it is; the verbs run through typer with a stand-in for
:class:`mljob.client.Client` that hands back the models a cluster would (the real cluster is test_e2e_client's).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from mljob.api import MLJob
from mljob.cli import verbs
from mljob.cli.app import app
from mljob.core import progress as core

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def reported(*reports: dict[str, Any]) -> dict[str, Any]:
    """The status fields the operator writes after these reports, one every ten seconds from T0."""
    state = core.Progress()
    for i, body in enumerate(reports):
        now = T0 + timedelta(seconds=10 * (i + 1))
        state = core.fold(state, core.parse_report({"trainerStatus": body}, now), now)
    return state.to_status()


def model(name: str, status: dict[str, Any] | None = None) -> MLJob:
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": name, "namespace": "team", "creationTimestamp": ts(0)},
            "spec": {"framework": "pytorch", "replicaSpecs": {"Master": {"replicas": 1, "template": {}}}},
            "status": {"phase": "Running", **(status or {})},
        }
    )


RUNNING = reported(
    {"step": 100, "totalSteps": 1000, "metrics": [{"name": "loss", "value": "0.9"}]},
    {
        "step": 420,
        "totalSteps": 1000,
        "metrics": [{"name": "loss", "value": "0.42"}, {"name": "eval_acc", "value": "0.7"}],
    },
)


def test_the_cells_are_the_operators_display_strings_and_empty_without_reports():
    assert verbs.progress_cells(model("j", RUNNING).status.to_dict(), T0) == ["42%", RUNNING["eta"]]  # type: ignore[union-attr]
    assert RUNNING["eta"]
    assert verbs.progress_cells(model("quiet").status.to_dict(), T0) == ["", ""]  # type: ignore[union-attr]
    assert verbs.progress_cells(None, T0) == ["", ""]
    assert verbs.progress_cells(reported({"step": 420}), T0) == ["step 420", ""]


def test_describe_lists_percent_step_eta_last_report_and_each_metrics_latest_value():
    status = model("j", RUNNING).status
    assert status is not None
    lines = verbs.progress_lines(status.to_dict(), T0 + timedelta(seconds=65))
    assert lines == [
        "Progress:",
        "  Percent:     42%",
        "  Step:        420/1000",
        f"  ETA:         {RUNNING['eta']}",
        f"  Last report: 45s ago ({ts(20)})",
        "  Metrics:",
        "    loss      0.42",
        "    eval_acc  0.7",
    ]


def test_describe_says_nothing_of_progress_for_a_job_that_never_reported():
    status = model("quiet").status
    assert status is not None
    assert verbs.progress_lines(status.to_dict(), T0) == []
    assert verbs.progress_lines(None, T0) == []


def test_a_step_only_job_and_a_finished_one_describe_what_is_known():
    assert verbs.progress_lines(reported({"step": 7}), T0 + timedelta(seconds=10)) == [
        "Progress:",
        "  Step:        7",
        f"  Last report: 0s ago ({ts(10)})",
    ]
    done = reported({"step": 420, "totalSteps": 1000})
    done.update(core.finished(done, succeeded=True) or {})
    assert verbs.progress_lines(done, T0 + timedelta(seconds=10))[:3] == [
        "Progress:",
        "  Percent:     100%",
        "  Step:        1000/1000",
    ]


def test_control_characters_in_a_metric_reach_the_terminal_escaped():
    status = reported({"metrics": [{"name": "loss\x1b[2J", "value": "1\n2"}]})
    lines = verbs.progress_lines(status, T0)
    assert lines[-1] == "    loss\\x1b[2J  1\\n2"
    assert all(c.isprintable() for line in lines for c in line)


class Stand:
    """The client the verbs are given: the models a cluster would return, no pods, no Events."""

    namespace = "team"

    def __init__(self, *jobs: MLJob) -> None:
        self.by_name = {j.name: j for j in jobs}
        self.core = SimpleNamespace(list_namespaced_pod=lambda *a, **k: SimpleNamespace(items=[]))

    def get(self, name: str) -> MLJob:
        return self.by_name[name]

    def jobs(self, all_namespaces: bool = False) -> list[MLJob]:
        return list(self.by_name.values())

    def pods(self, name: str) -> list[dict[str, Any]]:
        return []

    def events(self, name: str) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def stand(monkeypatch: pytest.MonkeyPatch) -> Stand:
    client = Stand(model("busy", RUNNING), model("quiet"))
    monkeypatch.setattr(verbs, "_client", lambda namespace: client)
    return client


def test_get_shows_progress_and_eta_columns_with_empty_cells_for_a_quiet_job(runner: CliRunner, stand: Stand):
    shown = runner.invoke(app, ["get"])
    assert shown.exit_code == 0, shown.output
    header, busy, quiet = shown.output.splitlines()
    assert header.split() == ["NAME", "FRAMEWORK", "PHASE", "READY", "RESTARTS", "PROGRESS", "ETA", "AGE"]
    assert busy.split()[:7] == ["busy", "pytorch", "Running", "0/1", "0", "42%", RUNNING["eta"]]
    column = header.index("PROGRESS")
    assert busy[column:].startswith("42%")
    assert quiet.split()[:5] == ["quiet", "pytorch", "Running", "0/1", "0"]
    assert quiet[column : header.index("AGE")].strip() == ""  # empty cells, not a dash


def test_describe_shows_the_progress_section_only_for_a_job_that_reported(runner: CliRunner, stand: Stand):
    busy = runner.invoke(app, ["describe", "busy"])
    assert busy.exit_code == 0, busy.output
    text = busy.output
    assert text.index("Restarts:") < text.index("Progress:") < text.index("Conditions:")
    for needle in ("  Percent:     42%", "  Step:        420/1000", "  Last report: ", "    loss      0.42"):
        assert needle in text, (needle, text)
    quiet = runner.invoke(app, ["describe", "quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "Progress" not in quiet.output
