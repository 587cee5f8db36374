"""The rulebook's order of precedence, one table row per pair of rules that hold at once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mljob import Framework, MLJob, Outcome, Replica, Role
from mljob.core.rules import (
    BACKOFF_LIMIT_EXCEEDED,
    DEADLINE_EXCEEDED,
    REPLICA_FAILED,
    SPEC_CHANGED,
    SUCCEEDED,
    Finish,
    Seen,
    State,
    Stop,
    judge,
)
from mljob.core.validation import PLUGIN_ERROR

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CHIEF, W0, W1 = Replica("Chief", 0), Replica("Worker", 0), Replica("Worker", 1)


class Chiefly(Framework):
    """TensorFlow's shape: the chief's success is the job's."""

    name = "chiefly"
    roles = (Role("Chief", 1, leader=True, max_replicas=1), Role("Worker", 1))

    def env(self, job: MLJob, replica: Replica, cluster: Any) -> Mapping[str, str]:
        return {}

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        return outcomes.get(CHIEF) is Outcome.SUCCEEDED


class Raising(Chiefly):
    name = "raising"

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        raise RuntimeError("boom")


def job(policy: str = "Never", backoff: int = 1, deadline: int | None = 10) -> MLJob:
    container = {"name": "c", "image": "x"}
    specs = {
        role: {"replicas": n, "restartPolicy": policy, "template": {"spec": {"containers": [container]}}}
        for role, n in (("Chief", 1), ("Worker", 2))
    }
    run_policy: dict[str, Any] = {"backoffLimit": backoff}
    if deadline is not None:
        run_policy["activeDeadlineSeconds"] = deadline
    spec = {"framework": "chiefly", "replicaSpecs": specs, "runPolicy": run_policy}
    return MLJob.model_validate(
        {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "metadata": {"name": "j"}, "spec": spec}
    )


RUNNING = Seen(State.RUNNING)


def exited(code: int, counted: bool = False) -> Seen:
    return Seen(State.EXITED, Stop(code), counted=counted)


def decide(
    seen: dict[Replica, Seen], *, policy: str = "Never", restarts: int = 0, at: float = 0, **kw: Any
) -> Finish | None:
    changes = kw.pop("spec_changes", None)
    everyone = {CHIEF: RUNNING, W0: RUNNING, W1: RUNNING, **seen}
    framework = kw.pop("framework", Chiefly())
    return judge(job(policy, **kw), framework, everyone, restarts, T0, T0 + timedelta(seconds=at), changes).finish


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # success beats a permanent failure in the same look
        (dict(seen={CHIEF: exited(0), W0: exited(1)}), (SUCCEEDED, "the job succeeded")),
        # success beats the deadline
        (dict(seen={CHIEF: exited(0)}, at=60), (SUCCEEDED, "the job succeeded")),
        # a permanent failure beats backoffLimit and the deadline
        (
            dict(seen={W0: exited(1), W1: exited(137)}, policy="ExitCode", restarts=1, at=60),
            (REPLICA_FAILED, "worker-0 exited with code 1"),
        ),
        # two permanent failures: the first named, the rest counted
        (dict(seen={W0: exited(1), W1: exited(2)}), (REPLICA_FAILED, "worker-0 exited with code 1 (and 1 more)")),
        # backoffLimit beats the deadline, naming the first restart in replica order
        (
            dict(seen={W0: exited(137), W1: exited(143)}, policy="ExitCode", restarts=0, at=60),
            (BACKOFF_LIMIT_EXCEEDED, "worker-0 exited with code 137; backoffLimit 1 reached"),
        ),
        # the deadline beats a spec change
        (
            dict(seen={}, at=10, spec_changes=["j-worker-2"]),
            (DEADLINE_EXCEEDED, "activeDeadlineSeconds (10s) passed since startTime 2026-01-01T12:00:00Z"),
        ),
        # a spec change a pod would have to follow, when nothing else holds
        (dict(seen={}, at=5, spec_changes=["j-worker-2"]), (SPEC_CHANGED, None)),
        # a success rule that raises fails its job, whatever else holds
        (
            dict(seen={W0: exited(1)}, framework=Raising()),
            (PLUGIN_ERROR, "plugin 'raising' failed in succeeded: RuntimeError: boom"),
        ),
    ],
)
def test_the_first_rule_that_holds_decides(case: dict[str, Any], expected: tuple[str, str | None]) -> None:
    finish = decide(**case)
    assert finish is not None
    assert finish.reason == expected[0]
    if expected[1] is not None:
        assert finish.message == expected[1]


def test_a_restart_counted_by_an_earlier_look_is_not_counted_again() -> None:
    """The operator's recreation under way: its restart is in ``restarts`` already."""
    assert decide({W0: exited(137, counted=True)}, policy="ExitCode", restarts=1) is None
    assert decide({W0: exited(137)}, policy="ExitCode", restarts=1) is not None


def test_nothing_left_that_could_meet_the_success_rule_fails_the_job() -> None:
    class Never(Chiefly):
        def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
            return False

    finish = decide({CHIEF: exited(0), W0: exited(0), W1: exited(0)}, framework=Never())
    assert finish == Finish(False, REPLICA_FAILED, "every replica has finished but the chiefly success rule is not met")
    assert decide({CHIEF: exited(0), W0: exited(0)}, framework=Never()) is None  # worker-1 still runs
