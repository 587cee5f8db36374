"""Kueue, pure: the Workload a queued job gets, and what the planner does with each state Kueue puts it in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mljob.api import MLJob, MLJobStatus
from mljob.core.reconcile import QUEUED, Desired, Placement, Plan, desire, plan
from mljob.plugins import load_plugins

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(labels: dict[str, str] | None = None, priority: str | None = None) -> MLJob:
    def template(cpu: str) -> dict[str, Any]:
        resources = {"requests": {"cpu": cpu}}
        return {"spec": {"containers": [{"name": "pytorch", "image": "busybox:1.36", "resources": resources}]}}

    run_policy = {"schedulingPolicy": {"priorityClass": priority}} if priority else {}
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {
                "name": "q",
                "namespace": "team",
                "uid": "u-1",
                "labels": {"kueue.x-k8s.io/queue-name": "research"} if labels is None else labels,
            },
            "spec": {
                "framework": "pytorch",
                "replicaSpecs": {
                    "Master": {"replicas": 1, "template": template("1")},
                    "Worker": {"replicas": 2, "template": template("500m")},
                },
                "runPolicy": run_policy,
            },
        }
    )


def with_status(j: MLJob, result: Plan) -> MLJob:
    assert result.status is not None
    merged = {**(j.status.model_dump(by_alias=True, exclude_none=True) if j.status else {}), **result.status}
    return j.model_copy(update={"status": MLJobStatus.model_validate(merged)})


def workload(desired: Desired, conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    assert desired.queued is not None
    meta = {**desired.queued["metadata"], "uid": "w", "resourceVersion": "11", "generation": 1}
    return {**desired.queued, "metadata": meta, "status": {"conditions": conditions or [], **status}}


ADMISSION = {
    "clusterQueue": "cluster-research",
    "podSetAssignments": [
        {"name": "master", "flavors": {"cpu": "spot"}, "count": 1},
        {"name": "worker", "flavors": {"cpu": "on-demand"}, "count": 2},
    ],
}
ADMITTED = [
    {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved"},
    {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"},
]
FLAVORS = {
    "spot": {"spec": {"nodeLabels": {"pool": "spot"}, "tolerations": [{"key": "spot", "operator": "Exists"}]}},
    "on-demand": {"spec": {"nodeLabels": {"pool": "on-demand"}}},
}


def test_the_workload_has_one_pod_set_per_role_owned_by_the_job_in_its_queue():
    desired = desire(job(priority="high"), load_plugins(), Placement())
    wl = desired.queued
    assert wl is not None
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert wl["kind"] == "Workload"
    assert wl["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert wl["metadata"]["ownerReferences"][0]["controller"]
    assert wl["spec"]["queueName"] == "research"
    assert [(s["name"], s["count"]) for s in wl["spec"]["podSets"]] == [("master", 1), ("worker", 2)]
    worker = wl["spec"]["podSets"][1]["template"]["spec"]
    assert worker["containers"][0]["resources"] == {"requests": {"cpu": "500m"}}
    assert worker["priorityClassName"] == "high"
    assert wl["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    assert desire(job(labels={}), load_plugins(), Placement()).queued is None


def test_a_queued_job_creates_its_workload_and_no_pod_until_admitted_and_says_why_it_waits():
    j = job()
    desired = desire(j, load_plugins(), Placement())
    first = plan(j, desired, [], None, NOW)
    assert [o["kind"] for o in first.creates] == ["Workload"]
    assert first.status is not None
    assert first.status["phase"] == "Suspended"
    suspended = next(c for c in first.status["conditions"] if c["type"] == "Suspended")
    assert suspended["reason"] == QUEUED
    assert "LocalQueue research" in suspended["message"]
    j = with_status(j, first)
    quota = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "couldn't assign flavors to pod set master: insufficient unused quota for cpu in flavor spot",
    }
    waiting = plan(j, desired, [], None, NOW, {"Workload": workload(desired, [quota])})
    assert waiting.creates == ()
    assert waiting.status is not None
    assert "insufficient unused quota for cpu" in waiting.status["message"]


def test_admission_creates_the_pods_on_their_flavors_and_resumes_the_job():
    j = job()
    desired = desire(j, load_plugins(), Placement())
    j = with_status(j, plan(j, desired, [], None, NOW))
    wl = workload(desired, ADMITTED, admission=ADMISSION)
    result = plan(j, desired, [], None, NOW, {"Workload": wl}, FLAVORS)
    pods = [o for o in result.creates if o["kind"] == "Pod"]
    assert len(pods) == 3
    master, *workers = pods
    assert master["spec"]["nodeSelector"] == {"pool": "spot"}
    assert master["spec"]["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert all(w["spec"]["nodeSelector"] == {"pool": "on-demand"} for w in workers)
    assert all("nodeSelector" not in p["spec"] for p in desired.pods)  # the cached rendering is left alone
    assert result.status is not None
    suspended = next(c for c in result.status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "False"
    assert suspended["reason"] == "Admitted"
    assert any(e.reason == "Admitted" and "cluster-research" in e.message for e in result.events)


def _pods(desired: Desired, phase: str) -> list[dict[str, Any]]:
    state = {"running": {}} if phase == "Running" else {"terminated": {"exitCode": 0}}
    status = {"phase": phase, "containerStatuses": [{"name": "pytorch", "state": state, "ready": True}]}
    return [{**p, "metadata": {**p["metadata"], "uid": f"p{i}"}, "status": status} for i, p in enumerate(desired.pods)]


def test_the_job_reports_pods_ready_then_finished_on_its_workload():
    j = job()
    desired = desire(j, load_plugins(), Placement())
    wl = workload(desired, ADMITTED, admission=ADMISSION)
    service = {**(desired.service or {}), "metadata": {**(desired.service or {})["metadata"], "uid": "s"}}
    j = with_status(j, plan(j, desired, [], None, NOW, {"Workload": wl}, FLAVORS))
    running = plan(j, desired, _pods(desired, "Running"), service, NOW, {"Workload": wl}, FLAVORS)
    (patch,) = running.patches
    assert patch.kind == "Workload"
    assert patch.name == "q"
    assert patch.resource_version == "11"
    ready = next(c for c in patch.status["conditions"] if c["type"] == "PodsReady")
    assert ready["status"] == "True"
    assert ready["reason"] == "Started"
    assert [c["type"] for c in patch.status["conditions"]][:2] == ["QuotaReserved", "Admitted"]  # Kueue's kept
    j = with_status(j, running)
    wl = {**wl, "status": {**wl["status"], "conditions": patch.status["conditions"]}}
    done = plan(j, desired, _pods(desired, "Succeeded"), service, NOW, {"Workload": wl}, FLAVORS)
    assert done.finished is not None
    assert done.finished.value == "Succeeded"
    (finished,) = done.patches
    found = next(c for c in finished.status["conditions"] if c["type"] == "Finished")
    assert found["status"] == "True"
    assert found["reason"] == "Succeeded"


def test_eviction_deletes_the_pods_then_gives_the_quota_back():
    j = job()
    desired = desire(j, load_plugins(), Placement())
    evicted = {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate x"}
    wl = workload(desired, [*ADMITTED, evicted], admission=ADMISSION)
    j = with_status(j, plan(j, desired, [], None, NOW, {"Workload": workload(desired, ADMITTED, admission=ADMISSION)}))
    pods = _pods(desired, "Running")
    first = plan(j, desired, pods, None, NOW, {"Workload": wl})
    assert {d.name for d in first.deletes} == {"q-master-0", "q-worker-0", "q-worker-1"}
    assert first.patches == ()  # the quota is held until every pod is gone
    assert first.status is not None
    assert "evicted by Kueue: Preempted to accommodate x" in first.status["message"]
    gone = plan(with_status(j, first), desired, [], None, NOW, {"Workload": wl})
    (patch,) = gone.patches
    assert patch.status["admission"] is None
    kinds = {c["type"]: (c["status"], c["reason"]) for c in patch.status["conditions"]}
    assert kinds["QuotaReserved"] == ("False", "Pending")
    assert kinds["Admitted"] == ("False", "NoReservation")
    assert kinds["Requeued"] == ("True", "Preempted")
    assert gone.creates == ()


def test_a_cluster_without_kueue_fails_a_queued_job_with_the_label_path():
    desired = desire(job(), load_plugins(), Placement(kueue=False))
    assert not desired.ok
    (problem,) = desired.problems
    assert problem.path == "metadata.labels.kueue.x-k8s.io/queue-name"
    assert "Kueue" in problem.message
    assert desire(job(labels={}), load_plugins(), Placement(kueue=False)).ok


def test_a_queue_name_that_is_no_dns_label_is_refused():
    desired = desire(job(labels={"kueue.x-k8s.io/queue-name": "Bad_Queue"}), load_plugins(), Placement())
    assert [p.path for p in desired.problems] == ["metadata.labels.kueue.x-k8s.io/queue-name"]
