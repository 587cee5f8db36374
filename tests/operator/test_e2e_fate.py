"""The rulebook's hard cases through the real operator, on the local control plane (kwok plays the kubelet).

Two things that happen "in the same instant" must be one observation for the rule of precedence to decide
(mljob.core.rules). The operator is killed while kwok ends the pods and started again once the API server
shows both: it plans nothing before its watches have listed every pod, so its first pass sees both. (Pausing
it instead is no such instant: a pass it had already scheduled runs the moment it continues, before its
watches have read what came meanwhile.) The same cases run through ``mljob run`` in
tests/local/test_local_fate.py; the messages differ only where the kubelet names a reason (``(Error)``) that a
local process has not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from harness import E2EJob, Forever, Kube, OperatorProcess, Role, Run, conditions

from mljob.api import parse_time


@contextmanager
def operator_away(operator: OperatorProcess) -> Iterator[None]:
    """The operator killed (as a crash would), and started again on the way out."""
    operator.kill()
    try:
        yield
    finally:
        operator.start()


def phase_of(b: Kube, job: str, pod: str) -> str:
    return str((b.pods(job).get(f"{job}-{pod}") or {}).get("status", {}).get("phase") or "")


def test_a_chief_that_succeeds_as_workers_fail_wins(world: Any) -> None:
    w = world()
    b = w.kube
    name = "fate-chief"
    roles = {"Chief": Role(1, (Forever(),), "Never"), "Worker": Role(2, (Forever(),), "Never")}
    b.submit(E2EJob(name, "tensorflow", roles))
    b.wait_phase(name, "Running")
    with operator_away(w.operator):
        b.exit(f"{name}-chief-0", 0)
        b.exit(f"{name}-worker-0", 1)
        b.exit(f"{name}-worker-1", 1)
        b.wait(
            lambda: (
                [phase_of(b, name, p) for p in ("chief-0", "worker-0", "worker-1")] == ["Succeeded", "Failed", "Failed"]
            ),
            what="the chief and both workers ended, as the API server shows",
        )
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert conditions(status)["Succeeded"] == ("True", "Succeeded"), status
    assert status["message"] == "the job succeeded"
    assert "Failed" not in conditions(status)


def test_a_failure_at_the_deadline_is_the_reason(world: Any) -> None:
    w = world()
    b = w.kube
    name = "fate-deadline"
    roles = {"Master": Role(1, (Forever(),), "OnFailure"), "Worker": Role(1, (Forever(),), "Never")}
    b.submit(E2EJob(name, "pytorch", roles, run_policy={"activeDeadlineSeconds": 4}))
    status = b.wait_phase(name, "Running")
    started = parse_time(status["startTime"])
    assert started is not None
    with operator_away(w.operator):
        b.exit(f"{name}-worker-0", 1)
        b.wait(lambda: phase_of(b, name, "worker-0") == "Failed", what="worker-0 failed")
        b.wait(lambda: (datetime.now(UTC) - started).total_seconds() > 5, what="the deadline to pass")
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert conditions(status)["Failed"] == ("True", "ReplicaFailed"), status
    assert status["message"] == "worker-0 exited with code 1 (Error)"


def test_backoff_is_exhausted_by_the_exit_after_the_last_allowed_restart(backend: Kube) -> None:
    name = "fate-backoff"
    fail = Run(1, after=0.3)
    roles = {"Worker": Role(1, (fail, fail, Forever()), "OnFailure")}
    backend.submit(E2EJob(name, "pytorch", roles, run_policy={"backoffLimit": 1}))
    status = backend.wait_phase(name, "Succeeded", "Failed", timeout=backend.timeout * 2)
    assert conditions(status)["Failed"] == ("True", "BackoffLimitExceeded"), status
    assert status["message"] == "worker-0 exited with code 1 (Error); backoffLimit 1 reached"
    # The kubelet restarted it in place a second time before the operator could refuse: that restart counts.
    assert status["restartCount"] == 2
