"""An elastic job through the planner (issue 25): a lost Worker is replaced, not the job's failure; the Worker
count changes while the job runs (``kubectl scale``) without touching the other pods; the status says the
membership, with an event each time it moves, and the selector the scale subresource reads.

A toy framework whose Workers are elastic within [2, 4] (:meth:`Framework.elastic`), as PyTorch's ``elasticPolicy``
makes them; its env does not depend on the Worker count, as the contract asks.
"""

from __future__ import annotations

from typing import Any

from jobkit import Toy, World, make_job, s

from mljob.api import MLJob, Phase
from mljob.framework import Elastic, Outcome


class Stretchy(Toy):
    name = "stretchy"

    def elastic(self, job: MLJob) -> Elastic | None:
        return Elastic("Worker", 2, 4)

    def succeeded(self, job: MLJob, outcomes: Any) -> bool:
        return bool(outcomes) and all(o is Outcome.SUCCEEDED for o in outcomes.values())


def running(workers: int = 3, policy: str = "Never") -> World:
    w = World(
        make_job("el", "stretchy").with_replicas("Worker", workers, policy).with_policy(backoffLimit=3), Stretchy()
    )
    w.step()
    for name in list(w.pods):
        w.put(w.update(name.removeprefix("el-")).running())
    w.step(s(1))
    assert w.status.phase is Phase.RUNNING
    return w


def events(result: Any, reason: str) -> list[str]:
    return [e.message for e in result.events if e.reason == reason]


def test_the_status_says_the_membership_and_the_selector_of_the_elastic_role():
    w = running()
    assert w.status.elastic is not None
    assert (w.status.elastic.running, w.status.elastic.min_replicas, w.status.elastic.max_replicas) == (3, 2, 4)
    assert w.status.selector == "mljob.io/job-name=el,mljob.io/replica-type=worker"


def test_a_lost_worker_is_replaced_and_counted_not_the_jobs_failure_even_under_never():
    w = running()
    w.put(w.update("worker-2").exited(137, "Killed"))
    result = w.step(s(2))
    assert w.status.phase is not Phase.FAILED
    assert [d.name for d in result.deletes] == ["el-worker-2"]
    assert w.status.restart_count == 1
    assert w.status.elastic is not None
    assert w.status.elastic.running == 2
    assert events(result, "MembershipChanged") == ["2 of 3 Worker replicas running, was 3 (elastic: 2 to 4)"]
    w.step(s(3))  # the replacement is created, then runs
    assert "el-worker-2" in w.pods
    w.put(w.update("worker-2").running())
    result = w.step(s(4))
    assert w.status.elastic.running == 3
    assert events(result, "MembershipChanged") == ["3 of 3 Worker replicas running, was 2 (elastic: 2 to 4)"]


def test_an_exit_with_an_error_code_is_replaced_too_and_the_backoff_limit_still_counts():
    w = running()
    for second in range(2, 6):
        w.put(w.update("worker-1").exited(1))
        w.step(s(second))
        w.step(s(second + 0.5))
        if w.status.phase is Phase.FAILED:
            break
        w.put(w.update("worker-1").running())
    assert w.status.phase is Phase.FAILED
    assert "backoffLimit 3 reached" in w.status.message
    assert "(elastic: replaced)" in w.status.message


def test_scaling_up_and_down_adds_and_removes_workers_and_leaves_the_others_alone():
    w = running(3)
    before = {name: pod["metadata"]["uid"] for name, pod in w.pods.items()}
    w.edit(replicaSpecs={"Worker": {"replicas": 4}})
    result = w.step(s(2))
    assert w.status.phase is Phase.RUNNING, w.status.message
    assert [c["metadata"]["name"] for c in result.creates if c["kind"] == "Pod"] == ["el-worker-3"]
    assert not result.deletes
    assert all(w.pods[name]["metadata"]["uid"] == uid for name, uid in before.items())
    assert (
        w.pods["el-worker-3"]["metadata"]["labels"]["mljob.io/spec-hash"]
        == (w.pods["el-worker-0"]["metadata"]["labels"]["mljob.io/spec-hash"])
    )
    w.put(w.update("worker-3").running())
    w.step(s(3))
    assert w.status.elastic is not None
    assert w.status.elastic.running == 4
    w.edit(replicaSpecs={"Worker": {"replicas": 2}})
    result = w.step(s(4))
    assert sorted(d.name for d in result.deletes) == ["el-worker-2", "el-worker-3"]
    assert w.status.phase is Phase.RUNNING
    assert w.status.elastic.running == 2


def test_a_job_that_is_not_elastic_still_fails_on_a_count_change_and_on_a_lost_worker():
    w = World(make_job("plain", "toy").with_replicas("Worker", 2, "Never"), Toy())
    w.step()
    for name in list(w.pods):
        w.put(w.update(name.removeprefix("plain-")).running())
    w.step(s(1))
    assert w.status.elastic is None
    assert w.status.selector is None
    w.put(w.update("worker-1").exited(137, "Killed"))
    w.step(s(2))
    assert w.status.phase is Phase.FAILED
