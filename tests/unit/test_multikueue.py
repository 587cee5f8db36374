"""MultiKueue, pure: an MLJob dispatched to a worker cluster, as the manager's operator and the worker's see it.

On the manager (``spec.managedBy: kueue.x-k8s.io/multikueue``) the operator queues the job and nothing more: its
Workload, no pod, no service, never a status write (Kueue copies the worker's status onto the job). On the worker
the job is Kueue's copy, labelled ``kueue.x-k8s.io/prebuilt-workload-name``: it runs in the Workload MultiKueue
made, which the operator adopts instead of creating its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mljob.api import MLJob
from mljob.core.kinds import MLJOB, dispatched
from mljob.core.reconcile import Placement, desire, plan
from mljob.plugins import load_plugins
from tests.unit.test_queueing import ADMISSION, ADMITTED, FLAVORS, NOW, job, with_status, workload

MULTIKUEUE = "kueue.x-k8s.io/multikueue"
PREBUILT = "kueue.x-k8s.io/prebuilt-workload-name"


def managed(by: str | None, labels: dict[str, str] | None = None) -> MLJob:
    body = job(labels).to_dict()
    return MLJob.model_validate({**body, "spec": {**body["spec"], "managedBy": by}})


def test_on_the_manager_the_job_gets_its_workload_and_nothing_else() -> None:
    j = managed(MULTIKUEUE)
    assert dispatched(j)
    desired = desire(j, load_plugins(), Placement())
    assert desired.ok, desired.problems
    first = plan(j, desired, [], None, NOW)
    assert [o["kind"] for o in first.creates] == ["Workload"]
    assert first.creates[0]["spec"]["queueName"] == "research"
    assert first.status is None  # Kueue writes it, from the worker
    assert first.events == ()
    admitted = plan(j, desired, [], None, NOW, {"Workload": workload(desired, ADMITTED, admission=ADMISSION)}, FLAVORS)
    assert admitted.empty  # admitted means dispatched: the pods run on the worker
    # A status Kueue copied back (the worker's job succeeded) changes nothing here either.
    done = {"phase": "Succeeded", "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}
    copied = MLJob.model_validate({**j.to_dict(), "status": done})
    finished = plan(copied, desired, [], None, NOW, {"Workload": workload(desired, ADMITTED, admission=ADMISSION)})
    assert finished.empty


def test_on_the_manager_an_evicted_workload_gives_its_quota_back_at_once() -> None:
    j = managed(MULTIKUEUE)
    desired = desire(j, load_plugins(), Placement())
    evicted = {"type": "Evicted", "status": "True", "reason": "AdmissionCheck", "message": "worker lost"}
    result = plan(j, desired, [], None, NOW, {"Workload": workload(desired, [*ADMITTED, evicted], admission=ADMISSION)})
    (patch,) = result.patches  # no pod to wait for: Kueue then deletes the worker's copy and queues again
    assert patch.status["admission"] is None
    assert result.status is None
    assert result.creates == ()


def test_dispatching_needs_a_queue_and_says_where_to_put_it() -> None:
    desired = desire(managed(MULTIKUEUE, labels={}), load_plugins(), Placement())
    (problem,) = desired.problems
    assert problem.path == "spec.managedBy"
    assert "kueue.x-k8s.io/queue-name" in problem.message
    # ... and such a job is failed here with the reason, as no other cluster will say it
    result = plan(managed(MULTIKUEUE, labels={}), desired, [], None, NOW)
    assert result.status is not None
    assert result.status["phase"] == "Failed"


@pytest.mark.parametrize(
    ("value", "elsewhere"),
    [(None, None), ("mljob.io/operator", None), (MULTIKUEUE, None), ("example.com/other", "example.com/other")],
)
def test_another_controllers_job_is_left_alone(value: str | None, elsewhere: str | None) -> None:
    body: dict[str, Any] = {"spec": {"managedBy": value} if value else {}}
    assert MLJOB.managed_elsewhere(body) == elsewhere


@pytest.mark.parametrize("value", ["multikueue", "Kueue.x-k8s.io/multikueue", "a/" + "b" * 62])
def test_managed_by_is_a_domain_prefixed_path(value: str) -> None:
    with pytest.raises(ValidationError, match=r"managed_by|managedBy"):
        managed(value)


def test_on_the_worker_the_prebuilt_workload_is_waited_for_not_created() -> None:
    j = job(labels={"kueue.x-k8s.io/queue-name": "research", PREBUILT: "q", "kueue.x-k8s.io/multikueue-origin": "m"})
    desired = desire(j, load_plugins(), Placement())
    assert desired.ok, desired.problems
    assert desired.queued is None
    first = plan(j, desired, [], None, NOW)
    assert first.creates == ()
    assert first.status is not None
    assert first.status["phase"] == "Suspended"
    assert "waiting to adopt Workload q, which MultiKueue made for the job" in first.status["message"]
    # Adopted (owned by the job) and admitted by the worker's Kueue: the pods, as for any queued job.
    prebuilt = workload(desire(job(), load_plugins(), Placement()), ADMITTED, admission=ADMISSION)
    result = plan(with_status(j, first), desired, [], None, NOW, {"Workload": prebuilt}, FLAVORS)
    assert len([o for o in result.creates if o["kind"] == "Pod"]) == 3
