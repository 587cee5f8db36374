"""Kueue: the Workload that queues an MLJob, and what its admission means for the job. Pure.

Kueue admits workloads against quota; for the job kinds it knows it also runs their "job framework"
controller, which creates the Workload and suspends the job until it is admitted. For an MLJob the operator
plays that part itself (Kueue lists the kind in ``integrations.externalFrameworks``), exactly as Kueue's own
jobframework reconciler does for a batch Job:

* a job labelled ``kueue.x-k8s.io/queue-name`` gets one ``kueue.x-k8s.io/v1beta2`` Workload, owned by the
  job, with one pod set per role (count and pod template, so Kueue sees every request);
* no pod exists until the Workload is admitted (the job reads Suspended, reason Queued, with Kueue's own
  words on why it waits);
* on admission, each pod gets the node labels and tolerations of the ResourceFlavors its pod set was
  assigned;
* the job writes PodsReady on the Workload when every replica runs, and Finished when it ends, which
  releases the quota;
* on eviction (preemption, deactivation) the job's pods are deleted and, once they are gone, the admission
  is cleared, so the quota is released and the Workload queues again, as Kueue's jobframework does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from mljob.api import ConditionType, MLJob
from mljob.core import children as podlib
from mljob.core.names import LABEL_JOB, QUEUE_LABEL
from mljob.core.plan import Draft, Plan
from mljob.core.status import clear_condition
from mljob.core.status import condition as condition_of

QUEUED = "Queued"
"""The Suspended reason of a job that waits for Kueue to admit it."""
KUEUE_API = "kueue.x-k8s.io/v1beta2"
KUEUE_RESOURCES = ("workloads", "resourceflavors")
EXTERNAL_FRAMEWORK = "MLJob.v1alpha1.mljob.io"
"""How Kueue's configuration names the kind in ``integrations.externalFrameworks``."""
NOT_SERVED = (
    "the job is labelled kueue.x-k8s.io/queue-name, but this cluster does not serve Kueue's "
    "kueue.x-k8s.io/v1beta2 Workload (install Kueue v0.17+: docs/placement-kueue.md), or the operator started "
    "before it was installed (restart the operator)"
)


PREBUILT_LABEL = "kueue.x-k8s.io/prebuilt-workload-name"
"""On a worker cluster, the Workload MultiKueue made for the job (a copy of the manager's): the job's own, which the
operator adopts (a controller ownerReference) instead of creating one, as Kueue's job controllers do."""


def prebuilt_workload(job: MLJob) -> str | None:
    """The Workload MultiKueue made for ``job`` on this worker cluster, if it is such a copy."""
    return job.metadata.labels.get(PREBUILT_LABEL)


def queue_name(job: MLJob) -> str | None:
    """The LocalQueue the job asks for, if any."""
    return job.metadata.labels.get(QUEUE_LABEL)


def workload_name(job: MLJob) -> str:
    return prebuilt_workload(job) or job.name


def workload(job: MLJob, owner: dict[str, Any]) -> dict[str, Any]:
    """The Workload Kueue admits for ``job``: one pod set per role with replicas."""
    pod_sets = []
    policy = job.spec.run_policy.scheduling_policy
    priority_class = policy.priority_class if policy is not None else None
    for role, spec in job.spec.replica_specs.items():
        if spec.replicas == 0:
            continue
        template = spec.template
        pod_spec = dict(template.get("spec") or {})
        if priority_class and "priorityClassName" not in pod_spec:
            pod_spec["priorityClassName"] = priority_class
        meta = template.get("metadata") or {}
        pod_template: dict[str, Any] = {"spec": pod_spec}
        if meta.get("labels"):
            pod_template["metadata"] = {"labels": dict(meta["labels"])}
        pod_sets.append({"name": role.lower(), "count": spec.replicas, "template": pod_template})
    body: dict[str, Any] = {
        "apiVersion": KUEUE_API,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": {LABEL_JOB: job.name},
            "ownerReferences": [owner],
        },
        "spec": {"queueName": queue_name(job), "podSets": pod_sets},
    }
    if priority_class:
        body["spec"]["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": priority_class,
        }
    return body


def condition(wl: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    status = wl.get("status") or {}
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def is_true(wl: Mapping[str, Any], kind: str) -> bool:
    found = condition(wl, kind)
    return found is not None and found.get("status") == "True"


@dataclass(frozen=True)
class Admission:
    """What Kueue decided for the job, read from its Workload."""

    admitted: bool
    evicted: str | None
    """Kueue's message when it evicted the workload (its pods must go), else None."""
    holds_quota: bool
    cluster_queue: str
    waiting: str
    """Why the workload is not admitted, in Kueue's words (or ours while Kueue has said nothing)."""
    flavors: dict[str, tuple[str, ...]]
    """Pod set name -> the ResourceFlavors it was assigned."""


def admission(wl: Mapping[str, Any] | None, queue: str) -> Admission:
    """Read the observed Workload (None: not created yet)."""
    if wl is None:
        return Admission(False, None, False, "", f"waiting for Kueue: creating its Workload in LocalQueue {queue}", {})
    status = wl.get("status") or {}
    granted = status.get("admission") or None
    evicted = condition(wl, "Evicted")
    evicted_message = None
    if evicted is not None and evicted.get("status") == "True":
        evicted_message = str(evicted.get("message") or evicted.get("reason") or "evicted")
    reserved = condition(wl, "QuotaReserved")
    if evicted_message is not None:
        waiting = f"evicted by Kueue: {evicted_message}"
    elif reserved is not None and reserved.get("message"):
        waiting = f"queued in LocalQueue {queue}: {reserved['message']}"
    else:
        waiting = f"queued in LocalQueue {queue}: waiting for Kueue to admit the Workload"
    flavors: dict[str, tuple[str, ...]] = {}
    for assignment in (granted or {}).get("podSetAssignments") or []:
        names = sorted(set((assignment.get("flavors") or {}).values()))
        flavors[str(assignment.get("name"))] = tuple(names)
    return Admission(
        admitted=granted is not None and is_true(wl, "Admitted") and evicted_message is None,
        evicted=evicted_message,
        holds_quota=granted is not None,
        cluster_queue=str((granted or {}).get("clusterQueue") or ""),
        waiting=waiting,
        flavors=flavors,
    )


def flavor_names(wl: Mapping[str, Any] | None) -> set[str]:
    """Every ResourceFlavor the Workload's admission names (the controller reads them before a pass)."""
    if wl is None:
        return set()
    return {name for names in admission(wl, "").flavors.values() for name in names}


def admit_pod(pod: dict[str, Any], pod_set: str, granted: Admission, flavors: Mapping[str, Mapping[str, Any]]) -> None:
    """Steer the pod to its admitted flavors: their node labels as node selectors, their tolerations, in place."""
    spec = pod["spec"]
    for name in granted.flavors.get(pod_set, ()):
        flavor = flavors.get(name) or {}
        flavor_spec = flavor.get("spec") or {}
        labels = flavor_spec.get("nodeLabels") or {}
        if labels:
            spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **labels}
        for toleration in flavor_spec.get("tolerations") or []:
            tolerations = spec.setdefault("tolerations", [])
            if toleration not in tolerations:
                tolerations.append(dict(toleration))


def set_conditions(
    wl: Mapping[str, Any], changes: Sequence[tuple[str, bool, str, str]], now: datetime
) -> list[dict[str, Any]] | None:
    """The Workload's conditions with ``(type, status, reason, message)`` applied; None when nothing changes.

    A merge patch replaces the list as a whole, so the result keeps every condition Kueue wrote.
    """
    conditions = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
    changed = False
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = (wl.get("metadata") or {}).get("generation")
    for kind, value, reason, message in changes:
        wanted = "True" if value else "False"
        found = next((c for c in conditions if c.get("type") == kind), None)
        if found is not None and found.get("status") == wanted and found.get("reason") == reason:
            continue
        new = {"type": kind, "status": wanted, "reason": reason, "message": message, "lastTransitionTime": stamp}
        if generation is not None:
            new["observedGeneration"] = generation
        if found is not None:
            if found.get("status") == wanted:
                new["lastTransitionTime"] = found.get("lastTransitionTime", stamp)
            found.clear()
            found.update(new)
        else:
            conditions.append(new)
        changed = True
    return conditions if changed else None


# --- the planner's Kueue steps: a pass of a job labelled with a queue adds these to its draft ---------------


def admitted(draft: Draft, queue: str, queued: dict[str, Any] | None) -> bool:
    """Whether Kueue lets the job run now; otherwise keep it without pods, saying why (Suspended, Queued).

    ``queued`` is the Workload to create when there is none yet.
    """
    wl = draft.placed.get("Workload")
    granted = admission(wl, queue)
    if wl is None and queued is not None:
        draft.creates.append(queued)
    if wl is None and (prebuilt := prebuilt_workload(draft.job)) is not None:
        granted = replace(granted, waiting=f"waiting to adopt Workload {prebuilt}, which MultiKueue made for the job")
    if granted.admitted:
        found = condition_of(draft.old, ConditionType.SUSPENDED)
        if found is not None and found.status == "True" and found.reason == QUEUED:
            message = f"admitted by Kueue to ClusterQueue {granted.cluster_queue}"
            draft.condition(ConditionType.SUSPENDED, False, "Admitted", message)
            draft.message = message
            draft.event("Normal", "Admitted", f"{message}: creating its pods")
        return True
    why = "evicted by Kueue" if granted.evicted is not None else "the job is not admitted by Kueue"
    for pod in draft.pods.values():
        draft.delete(pod, why)
    if wl is not None and granted.evicted is not None and granted.holds_quota and not draft.pods:
        release(draft, wl, granted.evicted)
    gate(draft, granted.waiting)
    return False


def release(draft: Draft, wl: Mapping[str, Any], evicted: str) -> None:
    """Every pod of an evicted job is gone: give the quota back and queue again, as Kueue's job controllers do."""
    requeue = str((condition(wl, "Evicted") or {}).get("reason") or "")
    conditions = set_conditions(
        wl,
        [
            ("QuotaReserved", False, "Pending", evicted),
            ("Admitted", False, "NoReservation", "The workload has no reservation"),
            ("Requeued", requeue in ("Preempted", "NodeFailures"), requeue or "Evicted", evicted),
        ],
        draft.now,
    )
    draft.patch_status(
        KUEUE_API, "Workload", wl, {"admission": None, "conditions": conditions}, "the job's pods are gone"
    )


def dispatch(draft: Draft, queue: str | None, queued: dict[str, Any] | None) -> Plan:
    """A job Kueue's MultiKueue runs on a worker cluster (``spec.managedBy: kueue.x-k8s.io/multikueue``), on the
    manager: its Workload only, which Kueue's admission check dispatches; no pod, no service, and no status write,
    because Kueue copies the worker's status onto this job. An evicted Workload still holding quota is released
    at once (there are no pods to wait for), which is what makes Kueue delete the worker's copy and queue again.
    """
    wl = draft.placed.get("Workload")
    creates = [queued] if wl is None and queued is not None else []
    if wl is not None and queue is not None:
        granted = admission(wl, queue)
        if granted.evicted is not None and granted.holds_quota:
            release(draft, wl, granted.evicted)
    return Plan(creates=tuple(creates), patches=tuple(draft.patches))


def gate(draft: Draft, message: str) -> None:
    """Suspended with reason Queued: no pod until Kueue admits the job; the message says why it waits."""
    found = condition_of(draft.old, ConditionType.SUSPENDED)
    if not draft.is_true(ConditionType.CREATED):
        draft.condition(ConditionType.CREATED, True, "Created", "the job was accepted; it waits in its queue")
        draft.accepted = True
    if found is None or found.status != "True" or found.reason != QUEUED:
        for kind in (ConditionType.RUNNING, ConditionType.RESTARTING):
            draft.conditions = clear_condition(draft.conditions, kind, QUEUED, message, draft.now)
        draft.event("Normal", QUEUED, message)
    draft.condition(ConditionType.SUSPENDED, True, QUEUED, message)
    draft.start_time = None
    draft.message = message
    draft.replica_statuses = draft.count_replicas()


def report_pods_ready(draft: Draft) -> None:
    """PodsReady on the Workload: True once every replica runs, False (why) when one stops running."""
    wl = draft.placed.get("Workload")
    if wl is None:
        return
    if draft.is_true(ConditionType.RUNNING):
        change = ("PodsReady", True, "Started", "All pods reached readiness and the workload is running")
    elif is_true(wl, "PodsReady") or condition(wl, "PodsReady") is None:
        reason = "WaitForRecovery" if is_true(wl, "PodsReady") else "WaitForStart"
        change = ("PodsReady", False, reason, "Not all pods are ready or succeeded")
    else:
        return
    conditions = set_conditions(wl, [change], draft.now)
    if conditions is not None:
        draft.patch_status(KUEUE_API, "Workload", wl, {"conditions": conditions}, "PodsReady")


def report_finished(draft: Draft, succeeded: bool, message: str) -> None:
    """Finished on the Workload: Kueue releases the job's quota."""
    wl = draft.placed.get("Workload")
    if wl is None or is_true(wl, "Finished"):
        return
    reason = "Succeeded" if succeeded else "Failed"
    conditions = set_conditions(wl, [("Finished", True, reason, message or reason)], draft.now)
    if conditions is not None:
        draft.patch_status(KUEUE_API, "Workload", wl, {"conditions": conditions}, "the job finished")


def steer(draft: Draft, pod: dict[str, Any], flavors: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A pod about to be created, steered to the flavors Kueue assigned its role."""
    queue = queue_name(draft.job)
    if queue is None:
        return pod
    granted = admission(draft.placed.get("Workload"), queue)
    which = podlib.replica_of(pod)
    if which is None or not granted.flavors:
        return pod
    steered = copy.deepcopy(pod)
    admit_pod(steered, which[0], granted, flavors)
    return steered
