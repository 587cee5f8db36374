"""The planner from creation to success: children, idempotence, ownership, conditions, success."""

from __future__ import annotations

import pytest
from jobkit import T0, UID, World, make_job, s

from mljob.api import Phase
from mljob.core.names import LABEL_SPEC_HASH
from mljob.core.reconcile import Event
from mljob.core.render import render


def world(**policy) -> World:
    return World(make_job().with_replicas("Master", 1).with_replicas("Worker", 2).with_policy(**policy))


def test_a_new_job_gets_exactly_the_rendered_children():
    w = world()
    p = w.plan()
    assert list(p.creates) == render(w.job, w.desired.framework, w.plugins, uid=UID)
    assert p.deletes == ()
    assert p.status is not None
    assert p.status["phase"] == "Pending"
    assert p.status["startTime"] == "2025-01-01T12:00:00Z"
    assert [c["type"] for c in p.status["conditions"]] == ["Created"]
    # The spec's fingerprint travels on the pods; the ledger is written at the first restart, not here.
    assert p.annotations is None
    assert {o["metadata"]["labels"].get(LABEL_SPEC_HASH) for o in p.creates if o["kind"] == "Pod"} == {
        w.desired.spec_hash
    }


def test_an_unchanged_world_plans_nothing():
    w = world()
    w.step()
    assert w.step(s(1)).status == {"replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 2}}}
    again = w.plan(s(5))
    assert again.empty
    assert again.wake_at is None


def test_creates_are_only_for_missing_pods_and_the_service_only_once():
    w = world()
    w.step()
    del w.pods["job-worker-1"]
    p = w.plan()
    assert [o["metadata"]["name"] for o in p.creates] == ["job-worker-1"]


def test_a_terminating_pod_is_waited_for_not_duplicated():
    w = world()
    w.step()
    w.put(w.update("worker-1").exited(143).terminating())
    p = w.plan()
    assert p.creates == ()
    assert p.deletes == ()


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda b: b.owned_by(None), id="labels-only"),
        pytest.param(lambda b: b.owned_by("someone-else"), id="other-owner-uid"),
    ],
)
def test_pods_without_our_controller_reference_are_never_counted_adopted_or_deleted(forge):
    w = world()
    w.put(forge(w.pod("worker-0")).exited(1), forge(w.pod("master-0")).running())
    p = w.plan()
    names = sorted(o["metadata"]["name"] for o in p.creates if o["kind"] == "Pod")
    assert names == ["job-master-0", "job-worker-0", "job-worker-1"]
    assert p.deletes == ()
    assert p.status["phase"] == "Pending"


def test_a_forged_pod_after_success_is_not_cleaned_up():
    w = world(cleanPodPolicy="All")
    w.step()
    w.put(w.pod("worker-1").owned_by(None).running())  # same name, no owner: someone else's
    w.put(w.update("master-0").succeeded(), w.update("worker-0").succeeded())
    p = w.plan()
    assert "job-worker-1" not in {d.name for d in p.deletes}


def test_running_when_every_replica_runs_then_succeeded():
    w = world()
    w.step()
    for r in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(r).running())
    p = w.step(s(1))
    assert w.status.phase is Phase.RUNNING
    assert p.events == ()  # the Running condition says it; an event would cost a request per job
    for r in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(r).succeeded())
    p = w.step(s(10))
    assert p.finished is Phase.SUCCEEDED
    assert p.events == (Event("Normal", "Succeeded", "the job succeeded", closing=True),)
    assert w.status.phase is Phase.SUCCEEDED
    assert w.condition("Running") == ("False", "Succeeded")
    assert w.condition("Succeeded") == ("True", "Succeeded")
    assert w.status.completion_time == s(10)
    assert w.status.replica_statuses["Worker"].succeeded == 2


def test_last_transition_time_moves_only_when_the_status_flips():
    w = world()
    w.step()
    for r in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(r).running())
    w.step(s(1))
    running = next(c for c in w.status.conditions if c.type == "Running")
    w.put(w.update("worker-0").succeeded())
    w.step(s(2))
    assert (
        next(c for c in w.status.conditions if c.type == "Running").last_transition_time == running.last_transition_time
    )
    created = next(c for c in w.status.conditions if c.type == "Created")
    assert created.last_transition_time == T0


def test_only_one_of_running_restarting_and_terminal_is_true():
    w = world(backoffLimit=5)
    w.step()
    for r in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(r).running())
    w.step(s(1))
    w.put(w.update("worker-0").restarted(1, crashloop=True))
    w.step(s(2))
    true = [c.type for c in w.status.conditions if c.status == "True" and c.type != "Created"]
    assert true == ["Restarting"]
    w.put(w.update("worker-0").restarted(1))
    w.step(s(3))
    true = [c.type for c in w.status.conditions if c.status == "True" and c.type != "Created"]
    assert true == ["Running"]


def test_a_pending_replica_says_why_in_the_message():
    w = world()
    w.step()
    w.put(w.update("worker-1").waiting("ImagePullBackOff"))
    w.step(s(1))
    assert w.status.message == "worker-1 is waiting: ImagePullBackOff"


def test_an_unschedulable_replica_says_what_the_scheduler_said():
    w = world()
    w.step()
    w.put(w.update("worker-1").unschedulable("0/3 nodes are available:\n 3 Insufficient cpu."))
    w.step(s(1))
    assert w.status.message == "worker-1 is waiting: Unschedulable (0/3 nodes are available: 3 Insufficient cpu.)"


def test_success_stops_roles_that_run_until_stopped_even_under_clean_pod_policy_none():
    w = World(make_job().with_replicas("Worker", 2).with_replicas("PS", 1).with_policy(cleanPodPolicy="None"))
    w.step()
    w.put(w.update("ps-0").running(), w.update("worker-0").succeeded(), w.update("worker-1").succeeded())
    p = w.step(s(5))
    assert p.finished is Phase.SUCCEEDED
    assert [(d.name, d.why.split(":")[0]) for d in p.deletes] == [
        ("job-ps-0", "stopping a role that runs until stopped")
    ]
    assert w.status.replica_statuses["PS"].succeeded == 1
    assert w.status.replica_statuses["PS"].active == 0


def test_the_success_rule_wins_over_a_replica_failure():
    w = World(make_job(framework="toy-master").with_replicas("Master", 1).with_replicas("Worker", 2, policy="Never"))
    w.step()
    w.put(w.update("master-0").succeeded(), w.update("worker-1").exited(1))
    p = w.plan(s(1))
    assert p.finished is Phase.SUCCEEDED


def test_a_job_being_deleted_is_left_to_the_garbage_collector():
    w = world()
    w.step()
    body = w.job.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["deletionTimestamp"] = "2025-01-01T13:00:00Z"
    w.job = type(w.job).model_validate(body)
    w.put(w.update("worker-0").exited(1))
    assert w.plan(s(1)).empty


def test_observed_generation_follows_the_spec():
    w = world()
    w.step()
    w.step()
    assert w.status.observed_generation == 1
    w.edit(runPolicy={"backoffLimit": 2})
    p = w.step(s(1))
    assert p.status == {"observedGeneration": 2}
