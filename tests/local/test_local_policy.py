"""The decision core of a local run, table by table: no process, no clock, no plugin package.

The rules themselves are the rulebook's (mljob.core.rules, shared with the operator); these tables check
that a local run asks it and turns its answer into the right processes.
"""

from datetime import UTC, datetime, timedelta

import pytest
from localfw import Tiny

from mljob import MLJob, Replica, RestartPolicy
from mljob.core import rules
from mljob.core.rules import (
    BACKOFF_LIMIT_EXCEEDED,
    DEADLINE_EXCEEDED,
    REPLICA_FAILED,
    SUCCEEDED,
    Verdict,
    verdict,
)
from mljob.local.policy import (
    SUCCESS_LINGER_SECONDS,
    Decision,
    Finish,
    Observed,
    Restart,
    Start,
    State,
    Terminate,
    decide,
    describe_exit,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

LEAD, W0, W1, SERVER = Replica("Lead", 0), Replica("Worker", 0), Replica("Worker", 1), Replica("Server", 0)
PENDING = Observed()
RUNNING = Observed(State.RUNNING)


def exited(code: int) -> Observed:
    return Observed(State.EXITED, code)


def job(policy: str | None = None, backoff: int = 3, deadline: int | None = None, server: bool = True) -> MLJob:
    def spec(replicas: int) -> dict:
        out: dict = {"replicas": replicas, "template": {"spec": {"containers": [{"name": "tiny", "image": "x"}]}}}
        if policy:
            out["restartPolicy"] = policy
        return out

    specs = {"Lead": spec(1), "Worker": spec(2)}
    if server:
        specs["Server"] = spec(1)
    run_policy: dict = {"backoffLimit": backoff}
    if deadline:
        run_policy["activeDeadlineSeconds"] = deadline
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": "t"},
            "spec": {"framework": "tiny", "replicaSpecs": specs, "runPolicy": run_policy},
        }
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(job_: MLJob, observed: dict, restarts: int = 0, now: float = 10.0) -> Decision:
    every = {LEAD: PENDING, W0: PENDING, W1: PENDING, SERVER: PENDING}
    if "Server" not in job_.spec.replica_specs:
        del every[SERVER]
    return decide(job_, Tiny(), {**every, **observed}, restarts, started=T0, now=at(now))


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        (RestartPolicy.NEVER, 0, Verdict.SUCCEEDED),
        (RestartPolicy.NEVER, 1, Verdict.FAILED),
        (RestartPolicy.NEVER, 137, Verdict.FAILED),
        (RestartPolicy.NEVER, -9, Verdict.FAILED),
        (RestartPolicy.ON_FAILURE, 0, Verdict.SUCCEEDED),
        (RestartPolicy.ON_FAILURE, 1, Verdict.RESTART),
        (RestartPolicy.ON_FAILURE, -15, Verdict.RESTART),
        (RestartPolicy.ALWAYS, 0, Verdict.RESTART),
        (RestartPolicy.ALWAYS, 2, Verdict.RESTART),
        (RestartPolicy.EXIT_CODE, 0, Verdict.SUCCEEDED),
        (RestartPolicy.EXIT_CODE, 1, Verdict.FAILED),
        (RestartPolicy.EXIT_CODE, 127, Verdict.FAILED),
        (RestartPolicy.EXIT_CODE, 128, Verdict.RESTART),
        (RestartPolicy.EXIT_CODE, 137, Verdict.RESTART),
        (RestartPolicy.EXIT_CODE, 255, Verdict.RESTART),
        (RestartPolicy.EXIT_CODE, -9, Verdict.RESTART),
    ],
)
def test_verdict_per_restart_policy(policy, code, expected):
    assert verdict(policy, rules.Stop.of_returncode(code)) is expected


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "worker-1 exited with code 0"),
        (137, "worker-1 exited with code 137"),
        (-9, "worker-1 exited with code 137 (SIGKILL)"),
    ],
)
def test_describe_exit(code, text):
    assert describe_exit(Replica("Worker", 1), code) == text


def test_first_decision_starts_every_replica():
    decision = run(job(), {})
    assert decision.actions == (Start(LEAD), Start(W0), Start(W1), Start(SERVER))
    assert decision.wake_at is None


def test_nothing_to_do_while_running_but_wake_for_the_deadline():
    decision = run(job(deadline=30), {LEAD: RUNNING, W0: RUNNING, W1: RUNNING, SERVER: RUNNING}, now=5)
    assert decision == Decision((), wake_at=at(30))


def test_success_stops_what_runs_server_at_once_finishing_roles_after_a_linger():
    decision = run(job(), {LEAD: exited(0), W0: exited(0), W1: RUNNING, SERVER: RUNNING})
    assert decision.actions == (
        Terminate(W1, SUCCESS_LINGER_SECONDS),
        Terminate(SERVER, 0.0),
        Finish(True, SUCCEEDED, "the job succeeded"),
    )


def test_the_frameworks_success_rule_decides():
    assert run(job(), {LEAD: RUNNING, W0: exited(0), W1: exited(0), SERVER: RUNNING}).actions == ()
    observed = {W0: exited(0), W1: RUNNING, SERVER: RUNNING}
    assert decide(job(), Tiny(), {LEAD: RUNNING, **observed}, 0, T0, at(1)).finish is None


@pytest.mark.parametrize(
    ("policy", "code", "message"),
    [
        ("Never", 1, "worker-1 exited with code 1"),
        ("Never", 137, "worker-1 exited with code 137"),
        ("ExitCode", 1, "worker-1 exited with code 1"),
        ("ExitCode", 127, "worker-1 exited with code 127"),
    ],
)
def test_permanent_failure_fails_the_job_and_stops_everything_at_once(policy, code, message):
    decision = run(job(policy), {LEAD: RUNNING, W0: RUNNING, W1: exited(code), SERVER: RUNNING})
    assert decision.actions == (
        Terminate(LEAD),
        Terminate(W0),
        Terminate(SERVER),
        Finish(False, REPLICA_FAILED, message),
    )


@pytest.mark.parametrize(
    ("policy", "code"),
    [("OnFailure", 1), ("OnFailure", -9), ("Always", 0), ("Always", 3), ("ExitCode", 137), ("ExitCode", -15)],
)
def test_retryable_exit_restarts_the_replica(policy, code):
    decision = run(job(policy), {LEAD: RUNNING, W0: exited(code), W1: RUNNING, SERVER: RUNNING}, restarts=1)
    assert decision.actions == (Restart(W0, code),)


def test_the_default_restart_policy_is_the_frameworks():
    decision = run(job(None), {LEAD: RUNNING, W0: exited(1), W1: RUNNING, SERVER: RUNNING})
    assert decision.actions == (Restart(W0, 1),)  # Tiny's default is the base class's OnFailure


@pytest.mark.parametrize(("restarts", "backoff"), [(0, 0), (3, 3), (5, 5)])
def test_backoff_limit_counts_every_restart_across_the_job(restarts, backoff):
    decision = run(job("OnFailure", backoff=backoff), {LEAD: RUNNING, W0: exited(1), W1: RUNNING}, restarts)
    finish = decision.finish
    assert finish is not None
    assert finish.reason == BACKOFF_LIMIT_EXCEEDED
    assert finish.message == f"worker-0 exited with code 1; backoffLimit {backoff} reached"


def test_two_exits_at_once_need_room_for_both_restarts():
    observed = {LEAD: RUNNING, W0: exited(1), W1: exited(1), SERVER: RUNNING}
    assert run(job("OnFailure", backoff=2), observed, restarts=0).actions == (Restart(W0, 1), Restart(W1, 1))
    assert run(job("OnFailure", backoff=2), observed, restarts=1).finish is not None


def test_the_deadline_stops_a_job_that_would_restart_a_replica():
    decision = run(job(deadline=30), {LEAD: RUNNING, W0: RUNNING, W1: exited(1), SERVER: RUNNING}, now=30)
    message = "activeDeadlineSeconds (30s) passed since startTime 2026-01-01T12:00:00Z"
    assert decision.actions == (
        Terminate(LEAD),
        Terminate(W0),
        Terminate(SERVER),
        Finish(False, DEADLINE_EXCEEDED, message),
    )


def test_success_beats_the_deadline():
    decision = run(job(deadline=30), {LEAD: exited(0), W0: RUNNING, W1: exited(1), SERVER: RUNNING}, now=30)
    assert decision.finish == Finish(True, SUCCEEDED, "the job succeeded")


def test_success_wins_over_restarting_a_server_that_exited():
    observed = {LEAD: exited(0), W0: exited(0), W1: exited(0), SERVER: exited(1)}
    decision = run(job("OnFailure", backoff=0), observed)
    assert decision.actions == (Finish(True, SUCCEEDED, "the job succeeded"),)


def test_without_a_lead_every_worker_must_succeed():
    no_lead = job().model_copy(deep=True)
    specs = {k: v for k, v in no_lead.spec.replica_specs.items() if k != "Lead"}
    no_lead = no_lead.model_copy(update={"spec": no_lead.spec.model_copy(update={"replica_specs": specs})})
    observed = {W0: exited(0), W1: RUNNING, SERVER: RUNNING}
    assert decide(no_lead, Tiny(), observed, 0, T0, at(1)).finish is None
    observed = {W0: exited(0), W1: exited(0), SERVER: RUNNING}
    assert decide(no_lead, Tiny(), observed, 0, T0, at(1)).actions == (
        Terminate(SERVER),
        Finish(True, SUCCEEDED, "the job succeeded"),
    )


def test_a_server_that_exits_before_success_is_restarted():
    observed = {LEAD: RUNNING, W0: RUNNING, W1: RUNNING, SERVER: exited(1)}
    assert run(job("OnFailure"), observed).actions == (Restart(SERVER, 1),)


def test_pending_replicas_start_alongside_restarts():
    observed = {LEAD: RUNNING, W0: exited(137), W1: PENDING}
    assert run(job("ExitCode", server=False), observed).actions == (Start(W1), Restart(W0, 137))


def test_everything_exited_without_meeting_the_success_rule_fails():
    class Picky(Tiny):
        def succeeded(self, job, outcomes):
            return False

    observed = {LEAD: exited(0), W0: exited(0), W1: exited(0)}
    decision = decide(job(server=False), Picky(), observed, 0, T0, at(1))
    assert decision.finish == Finish(
        False, REPLICA_FAILED, "every replica has finished but the tiny success rule is not met"
    )
