"""Restart policies, the restart ledger and backoffLimit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from jobkit import World, make_job, s

from mljob.api import Phase
from mljob.core.status import LEDGER_ANNOTATION


def started(policy: str, backoff: int = 6, workers: int = 2) -> World:
    """A running job: master and workers, with ``policy`` on the workers."""
    w = World(
        make_job()
        .with_replicas("Master", 1, policy="OnFailure")
        .with_replicas("Worker", workers, policy=policy)
        .with_policy(backoffLimit=backoff)
    )
    w.step()
    for name in list(w.pods):
        short = name.removeprefix("job-")
        w.put(w.update(short).running())
    w.step(s(1))
    assert w.status.phase is Phase.RUNNING
    return w


@dataclass(frozen=True)
class Case:
    policy: str
    change: Any  # PodBuilder -> PodBuilder, applied to worker-1
    phase: Phase
    restarts: int
    recreated: bool
    message: str


CASES = {
    "onfailure-in-place": Case(
        "OnFailure", lambda b: b.restarted(2, 1), Phase.RUNNING, 2, False, "worker-1 exited with code 1 (Error)"
    ),
    "onfailure-crashloop": Case(
        "OnFailure",
        lambda b: b.restarted(1, 1, crashloop=True),
        Phase.RESTARTING,
        1,
        False,
        "worker-1 exited with code 1 (Error)",
    ),
    "always-in-place": Case(
        "Always", lambda b: b.restarted(1, 0, "Completed"), Phase.RUNNING, 1, False, "worker-1 exited with code 0"
    ),
    "onfailure-evicted": Case(
        "OnFailure", lambda b: b.evicted(), Phase.RESTARTING, 1, True, "worker-1 was evicted: The node was low"
    ),
    "never-fails": Case("Never", lambda b: b.exited(1), Phase.FAILED, 0, False, "worker-1 exited with code 1 (Error)"),
    "never-evicted-fails": Case("Never", lambda b: b.evicted(), Phase.FAILED, 0, False, "worker-1 was evicted"),
    "exitcode-oom": Case(
        "ExitCode",
        lambda b: b.exited(137, "OOMKilled"),
        Phase.RESTARTING,
        1,
        True,
        "worker-1 exited with code 137 (OOMKilled); recreating the pod (restart 1, backoffLimit 6)",
    ),
    "exitcode-sigterm": Case("ExitCode", lambda b: b.exited(143), Phase.RESTARTING, 1, True, "exited with code 143"),
    "exitcode-permanent": Case(
        "ExitCode", lambda b: b.exited(1), Phase.FAILED, 0, False, "worker-1 exited with code 1 (Error)"
    ),
    "exitcode-127": Case("ExitCode", lambda b: b.exited(127), Phase.FAILED, 0, False, "exited with code 127"),
    "exitcode-evicted": Case("ExitCode", lambda b: b.evicted(), Phase.RESTARTING, 1, True, "worker-1 was evicted"),
    "exitcode-node-lost": Case(
        "ExitCode", lambda b: b.lost_node(), Phase.RESTARTING, 1, True, "worker-1 lost its node (NodeLost)"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_restart_policy(case: Case):
    w = started(case.policy)
    w.put(case.change(w.update("worker-1")))
    p = w.plan(s(2))
    w.apply(p, children=False)
    assert w.status.phase is case.phase
    assert w.status.restart_count == case.restarts
    assert w.status.replica_statuses["Worker"].restarts == case.restarts
    assert case.message in w.status.message
    assert [d.name for d in p.deletes if "recreating" in d.why] == (["job-worker-1"] if case.recreated else [])
    if case.restarts:
        assert any(e.reason == "Restarted" and e.type == "Warning" for e in p.events)
    if case.phase is Phase.FAILED:
        assert w.condition("Failed") == ("True", "ReplicaFailed")
        assert p.creates == ()


def test_a_recreated_pod_comes_back_with_the_same_name_and_the_count_stays():
    w = started("ExitCode")
    w.put(w.update("worker-1").exited(137, "OOMKilled"))
    p = w.step(s(2))
    assert "job-worker-1" not in w.pods
    assert p.restarts == 1
    p = w.step(s(3))
    assert [o["metadata"]["name"] for o in p.creates] == ["job-worker-1"]
    w.put(w.update("worker-1").running())
    w.step(s(4))
    assert w.status.phase is Phase.RUNNING
    assert w.status.restart_count == 1


def test_a_restart_is_counted_once_however_often_it_is_observed():
    w = started("OnFailure")
    w.put(w.update("worker-1").restarted(1))
    w.step(s(2))
    for t in (3, 4, 5):
        assert w.step(s(t)).restarts == 0
    assert w.status.restart_count == 1
    w.put(w.update("worker-1").restarted(3))
    assert w.step(s(6)).restarts == 2
    assert w.status.restart_count == 3


def test_a_stale_pod_after_a_recreation_is_not_counted_again():
    """The status write succeeded but the watch still shows the old failed pod: no second count."""
    w = started("ExitCode")
    w.put(w.update("worker-1").exited(137))
    p = w.plan(s(2))
    w.apply(p, children=False)  # ledger and status written; the delete has not shown up yet
    again = w.plan(s(3))
    assert again.restarts == 0
    assert [d.name for d in again.deletes] == ["job-worker-1"]  # asks again: idempotent with the uid precondition
    assert again.annotations is None


def test_an_operator_restart_keeps_the_count():
    """Everything the count needs is in the job: a fresh planner reading the same job counts on from it."""
    w = started("OnFailure", backoff=3)
    w.put(w.update("worker-1").restarted(2))
    w.step(s(2))
    ledger = json.loads(w.job.metadata.annotations[LEDGER_ANNOTATION])
    assert ledger["restarts"] == {"Worker": 2}
    assert next(iter(ledger["pods"].values()))["seen"] == 2
    restarted = World(w.job, plugins=w.plugins)
    restarted.pods, restarted.service = w.pods, w.service
    assert restarted.plan(s(3)).empty
    restarted.put(restarted.update("worker-1").restarted(3))
    restarted.step(s(4))
    assert restarted.status.restart_count == 3


def test_a_job_that_never_restarts_never_writes_its_ledger():
    """Nothing to record, nothing written: the spec's fingerprint is on the pods (one request less per job)."""
    w = started("OnFailure")
    for short in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(short).succeeded())
    assert w.step(s(2)).finished is Phase.SUCCEEDED
    assert LEDGER_ANNOTATION not in w.job.metadata.annotations
    assert w.status.restart_count == 0


def test_the_first_restart_writes_the_ledger_with_the_spec_the_pods_come_from():
    w = started("ExitCode")
    w.put(w.update("worker-1").exited(137))
    p = w.step(s(2))
    ledger = json.loads(p.annotations[LEDGER_ANNOTATION])
    assert ledger["spec"] == w.desired.spec_hash
    assert ledger["restarts"] == {"Worker": 1}


def test_without_the_ledger_the_count_is_seeded_from_the_status():
    w = started("OnFailure")
    w.put(w.update("worker-1").restarted(2))
    w.step(s(2))
    body = w.job.model_dump(mode="json", by_alias=True, exclude_none=True)
    del body["metadata"]["annotations"][LEDGER_ANNOTATION]
    w.job = type(w.job).model_validate(body)
    w.put(w.update("worker-0").restarted(1))
    w.step(s(3))
    assert w.status.restart_count >= 3


def test_backoff_limit_stops_a_recreation_that_would_exceed_it():
    w = started("ExitCode", backoff=1)
    w.put(w.update("worker-1").exited(137))
    w.step(s(2))
    w.step(s(3))
    w.put(w.update("worker-1").running())
    w.step(s(4))
    w.put(w.update("worker-0").exited(137, "OOMKilled"))
    p = w.step(s(5))
    assert p.finished is Phase.FAILED
    assert w.condition("Failed") == ("True", "BackoffLimitExceeded")
    assert w.status.message == "worker-0 exited with code 137 (OOMKilled); backoffLimit 1 reached"
    assert w.status.restart_count == 1
    assert p.creates == ()


def test_backoff_limit_counts_in_place_restarts():
    w = started("OnFailure", backoff=2)
    w.put(w.update("worker-0").restarted(2))
    assert w.step(s(2)).finished is None
    w.put(w.update("worker-0").restarted(3, 1, "Error", crashloop=True))
    p = w.step(s(3))
    assert p.finished is Phase.FAILED
    assert w.condition("Failed") == ("True", "BackoffLimitExceeded")
    assert w.status.message.startswith("worker-0 exited with code 1 (Error); backoffLimit 2 reached")


def test_backoff_limit_zero_fails_on_the_first_restart():
    w = started("OnFailure", backoff=0)
    w.put(w.update("worker-0").restarted(1))
    assert w.step(s(2)).finished is Phase.FAILED


def test_a_pod_deleted_by_someone_else_is_recreated_without_counting():
    w = started("OnFailure")
    del w.pods["job-worker-0"]
    p = w.step(s(2))
    assert [o["metadata"]["name"] for o in p.creates] == ["job-worker-0"]
    assert p.restarts == 0
    assert w.status.phase is Phase.RESTARTING


def test_failure_cleans_up_per_policy_and_leaves_no_creates():
    w = started("Never")
    w.put(w.update("worker-1").exited(2))
    del w.pods["job-worker-0"]
    p = w.plan(s(2))
    assert p.creates == ()
    assert sorted(d.name for d in p.deletes) == ["job", "job-master-0"]  # cleanPodPolicy Running (default)


def test_a_restart_seen_in_the_pass_that_ends_the_job_still_gets_its_event():
    """The operator may see an in-place restart and the success at once (a busy operator, a restart)."""
    w = World(make_job(framework="toy-master").with_replicas("Master", 1).with_replicas("Worker", 1, "OnFailure"))
    w.step()
    w.put(w.update("master-0").running(), w.update("worker-0").running())
    w.step(s(1))
    w.put(w.update("worker-0").restarted(1), w.update("master-0").succeeded())
    p = w.step(s(2))
    assert p.finished is Phase.SUCCEEDED
    assert w.status.restart_count == 1
    assert [(e.reason, e.message.split(";")[0]) for e in p.events if e.reason == "Restarted"] == [
        ("Restarted", "worker-0 exited with code 1 (Error)")
    ]
