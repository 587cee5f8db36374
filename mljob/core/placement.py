"""Placement: the objects a gang scheduler reads and what each pod needs to join its gang, and locality.

Pure, like render: (job, the gang scheduler in force) -> objects and pod edits. We write no scheduler; each
backend speaks to one people run:

* ``kubernetes``: kube-scheduler's own gang scheduling (1.37, feature gate GenericWorkload): a
  ``scheduling.k8s.io/v1beta1`` Workload with one pod group template and the PodGroup that instantiates it,
  both owned by the MLJob; every pod names the PodGroup in ``spec.schedulingGroup.podGroupName``. No pod of
  the gang is bound until ``minCount`` of them can be, at once.
* ``coscheduling``: scheduler-plugins' Coscheduling plugin: a ``scheduling.x-k8s.io/v1alpha1`` PodGroup
  (minMember, minResources, scheduleTimeoutSeconds), the ``scheduling.x-k8s.io/pod-group`` label on every pod
  and the second scheduler's name.
* ``volcano``: a ``scheduling.volcano.sh/v1beta1`` PodGroup (minMember, minResources, queue, priority), the
  group-name annotation and ``schedulerName: volcano``; the planner creates pods only once Volcano has moved
  the PodGroup out of Pending (enqueued it), as Volcano's own job controller does.
* ``none``: every pod is scheduled on its own.

Locality (``schedulingPolicy.topology``) works with any scheduler, through pod affinity to the job's own pods
on the topology key: required keeps every pod in one domain, preferred tries to. With ``kubernetes``, a
required topology is also the PodGroup's own topology constraint (kube-scheduler places the gang in one
domain as a whole; feature gate TopologyAwareWorkloadScheduling), and the affinity stays as the guarantee on a
cluster without that gate, which drops the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mljob.api import GangScheduler, MLJob, TopologyMode
from mljob.core.names import LABEL_JOB
from mljob.core.quantity import parse_quantity
from mljob.framework import replicas_of

SCHEDULING_API = "scheduling.k8s.io/v1beta1"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
VOLCANO_API = "scheduling.volcano.sh/v1beta1"
POD_GROUP_TEMPLATE = "gang"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"
"""The scheduler name scheduler-plugins' install manifests give the second scheduler."""
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"

SERVED_BY: dict[GangScheduler, tuple[str, tuple[str, ...]]] = {
    GangScheduler.KUBERNETES: (SCHEDULING_API, ("workloads", "podgroups")),
    GangScheduler.COSCHEDULING: (COSCHEDULING_API, ("podgroups",)),
    GangScheduler.VOLCANO: (VOLCANO_API, ("podgroups",)),
}
"""What each backend needs the API server to serve: a group/version and its resources."""
NOT_SERVED = {
    GangScheduler.KUBERNETES: (
        "kubernetes gang scheduling needs scheduling.k8s.io/v1beta1 Workload and PodGroup, which this cluster "
        "does not serve (kube-apiserver, kube-controller-manager and kube-scheduler 1.37+ with the feature gate "
        "GenericWorkload, and the API server with --runtime-config=scheduling.k8s.io/v1beta1=true)"
    ),
    GangScheduler.COSCHEDULING: (
        "coscheduling needs the scheduling.x-k8s.io/v1alpha1 PodGroup CRD, which this cluster does not serve "
        "(install scheduler-plugins as a second scheduler: docs/placement-coscheduling.md)"
    ),
    GangScheduler.VOLCANO: (
        "volcano needs the scheduling.volcano.sh/v1beta1 PodGroup CRD, which this cluster does not serve "
        "(install Volcano: docs/placement-volcano.md)"
    ),
}
PENDING_PHASES = ("", "Pending")
"""A Volcano PodGroup in these phases is not enqueued yet: its pods would only wait in the scheduler."""


def gang_scheduler(job: MLJob, default: GangScheduler) -> GangScheduler:
    """The job's own choice, else the operator's."""
    policy = job.spec.run_policy.scheduling_policy
    if policy is not None and policy.gang_scheduler is not None:
        return policy.gang_scheduler
    return default


def min_count(job: MLJob) -> int:
    """How many pods must be placeable at once: ``minAvailable``, by default every replica."""
    policy = job.spec.run_policy.scheduling_policy
    if policy is not None and policy.min_available is not None:
        return policy.min_available
    return sum(spec.replicas for spec in job.spec.replica_specs.values())


def pod_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves for one pod: the sum of its containers' requests (a limit stands in for a
    missing request, as the API server defaults it), or an init container's, whichever is larger."""

    def of(container: Mapping[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: parse_quantity(value) for name, value in merged.items()}

    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in of(container).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for name, value in of(container).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    return total


def format_quantity(value: Decimal) -> str:
    """A canonical quantity: whole numbers as they are, fractions in milli-units (``1500m``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return f"{int((value * 1000).to_integral_value())}m"


def min_resources(job: MLJob) -> dict[str, str]:
    """``minResources``, by default the requests of the first ``minAvailable`` replicas in replica order."""
    policy = job.spec.run_policy.scheduling_policy
    if policy is not None and policy.min_resources is not None:
        return {name: str(value) for name, value in policy.min_resources.items()}
    total: dict[str, Decimal] = {}
    for replica in replicas_of(job)[: min_count(job)]:
        template = job.spec.replica_specs[replica.role].template
        for name, value in pod_requests(template.get("spec") or {}).items():
            total[name] = total.get(name, Decimal(0)) + value
    return {name: format_quantity(value) for name, value in sorted(total.items())}


def _meta(job: MLJob, owner: dict[str, Any]) -> dict[str, Any]:
    return {"name": job.name, "namespace": job.namespace, "labels": {LABEL_JOB: job.name}, "ownerReferences": [owner]}


def objects(job: MLJob, backend: GangScheduler, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects ``backend`` reads for this job, created before its pods."""
    policy = job.spec.run_policy.scheduling_policy
    priority_class = policy.priority_class if policy is not None else None
    if backend is GangScheduler.KUBERNETES:
        return _kubernetes(job, owner)
    if backend is GangScheduler.COSCHEDULING:
        spec: dict[str, Any] = {"minMember": min_count(job)}
        if resources := min_resources(job):
            spec["minResources"] = resources
        if policy is not None and policy.schedule_timeout_seconds is not None:
            spec["scheduleTimeoutSeconds"] = policy.schedule_timeout_seconds
        return [{"apiVersion": COSCHEDULING_API, "kind": "PodGroup", "metadata": _meta(job, owner), "spec": spec}]
    if backend is GangScheduler.VOLCANO:
        spec = {"minMember": min_count(job)}
        if resources := min_resources(job):
            spec["minResources"] = resources
        if policy is not None and policy.queue:
            spec["queue"] = policy.queue
        if priority_class:
            spec["priorityClassName"] = priority_class
        return [{"apiVersion": VOLCANO_API, "kind": "PodGroup", "metadata": _meta(job, owner), "spec": spec}]
    return []


def _kubernetes(job: MLJob, owner: dict[str, Any]) -> list[dict[str, Any]]:
    policy = job.spec.run_policy.scheduling_policy
    priority = {"priorityClassName": policy.priority_class} if policy is not None and policy.priority_class else {}
    gang = {"gang": {"minCount": min_count(job)}}
    topology = policy.topology if policy is not None else None
    constraints = (
        {"schedulingConstraints": {"topology": [{"key": topology.key}]}}
        if topology is not None and topology.mode is TopologyMode.REQUIRED
        else {}
    )
    workload = {
        "apiVersion": SCHEDULING_API,
        "kind": "Workload",
        "metadata": _meta(job, owner),
        "spec": {
            "controllerRef": {"apiGroup": owner["apiVersion"].split("/")[0], "kind": owner["kind"], "name": job.name},
            "podGroupTemplates": [{"name": POD_GROUP_TEMPLATE, "schedulingPolicy": gang, **constraints, **priority}],
        },
    }
    pod_group = {
        "apiVersion": SCHEDULING_API,
        "kind": "PodGroup",
        "metadata": _meta(job, owner),
        "spec": {
            "workloadRef": {"workloadName": job.name, "templateName": POD_GROUP_TEMPLATE},
            "schedulingPolicy": gang,
            **constraints,
            **priority,
        },
    }
    return [workload, pod_group]


def place_pod(job: MLJob, backend: GangScheduler, pod: dict[str, Any]) -> None:
    """Join the pod to its gang and apply the job's locality, in place."""
    spec = pod["spec"]
    if backend is GangScheduler.KUBERNETES:
        spec["schedulingGroup"] = {"podGroupName": job.name}
    elif backend is GangScheduler.COSCHEDULING:
        pod["metadata"].setdefault("labels", {})[COSCHEDULING_LABEL] = job.name
        spec.setdefault("schedulerName", COSCHEDULING_SCHEDULER)
    elif backend is GangScheduler.VOLCANO:
        pod["metadata"].setdefault("annotations", {})[VOLCANO_ANNOTATION] = job.name
        spec.setdefault("schedulerName", VOLCANO_SCHEDULER)
    policy = job.spec.run_policy.scheduling_policy
    topology = policy.topology if policy is not None else None
    if topology is None:
        return
    term = {"labelSelector": {"matchLabels": {LABEL_JOB: job.name}}, "topologyKey": topology.key}
    affinity = spec.setdefault("affinity", {}).setdefault("podAffinity", {})
    if topology.mode is TopologyMode.REQUIRED:
        affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(term)
    else:
        affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).append(
            {"weight": 100, "podAffinityTerm": term}
        )


def waits_for(backend: GangScheduler, observed: Mapping[str, Any] | None) -> str | None:
    """Why the job's pods must not be created yet given the gang object the watch has seen, or None.

    Only Volcano asks for this: its PodGroup is enqueued (Pending -> Inqueue) once its queue has room for
    minResources, and pods created before that would hold nothing but wait in the scheduler.
    """
    if backend is not GangScheduler.VOLCANO:
        return None
    if observed is None:
        return "waiting for the Volcano PodGroup to be created"
    status = observed.get("status") or {}
    phase = str(status.get("phase") or "")
    if phase not in PENDING_PHASES:
        return None
    notes = [str(c.get("message") or c.get("reason") or "") for c in status.get("conditions") or []]
    why = next((n for n in reversed(notes) if n), "")
    return "waiting for Volcano to enqueue the PodGroup (phase Pending)" + (f": {why}" if why else "")
