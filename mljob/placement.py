"""Placement: the objects a gang scheduler reads and what each pod needs to join its gang, and locality.

Pure, like render: (job, the gang scheduler in force) -> objects and pod edits. We write no scheduler; each
backend speaks to one people run:

* ``kubernetes``: kube-scheduler's own gang scheduling (1.37, feature gate GenericWorkload): a
  ``scheduling.k8s.io/v1beta1`` Workload with one pod group template and the PodGroup that instantiates it,
  both owned by the MLJob; every pod names the PodGroup in ``spec.schedulingGroup.podGroupName``. No pod of
  the gang is bound until ``minCount`` of them can be, at once.
* ``none``: every pod is scheduled on its own.

Locality (``schedulingPolicy.topology``) works with any scheduler, through pod affinity to the job's own pods
on the topology key: required keeps every pod in one domain, preferred tries to.
"""

from __future__ import annotations

from typing import Any

from mljob.api import GangScheduler, MLJob, TopologyMode
from mljob.names import LABEL_JOB

SCHEDULING_API = "scheduling.k8s.io/v1beta1"
POD_GROUP_TEMPLATE = "gang"
SERVED_BY = {GangScheduler.KUBERNETES: (SCHEDULING_API, ("workloads", "podgroups"))}
"""What each backend needs the API server to serve: a group/version and its resources."""
NOT_SERVED = {
    GangScheduler.KUBERNETES: (
        "kubernetes gang scheduling needs scheduling.k8s.io/v1beta1 Workload and PodGroup, which this cluster "
        "does not serve (kube-apiserver, kube-controller-manager and kube-scheduler 1.37+ with the feature gate "
        "GenericWorkload, and the API server with --runtime-config=scheduling.k8s.io/v1beta1=true)"
    ),
}


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


def _meta(job: MLJob, owner: dict[str, Any]) -> dict[str, Any]:
    return {"name": job.name, "namespace": job.namespace, "labels": {LABEL_JOB: job.name}, "ownerReferences": [owner]}


def objects(job: MLJob, backend: GangScheduler, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects ``backend`` reads for this job, created before its pods."""
    if backend is not GangScheduler.KUBERNETES:
        return []
    policy = job.spec.run_policy.scheduling_policy
    priority = {"priorityClassName": policy.priority_class} if policy is not None and policy.priority_class else {}
    gang = {"gang": {"minCount": min_count(job)}}
    workload = {
        "apiVersion": SCHEDULING_API,
        "kind": "Workload",
        "metadata": _meta(job, owner),
        "spec": {
            "controllerRef": {"apiGroup": "mljob.io", "kind": "MLJob", "name": job.name},
            "podGroupTemplates": [{"name": POD_GROUP_TEMPLATE, "schedulingPolicy": gang, **priority}],
        },
    }
    pod_group = {
        "apiVersion": SCHEDULING_API,
        "kind": "PodGroup",
        "metadata": _meta(job, owner),
        "spec": {
            "workloadRef": {"workloadName": job.name, "templateName": POD_GROUP_TEMPLATE},
            "schedulingPolicy": gang,
            **priority,
        },
    }
    return [workload, pod_group]


def place_pod(job: MLJob, backend: GangScheduler, pod: dict[str, Any]) -> None:
    """Join the pod to its gang and apply the job's locality, in place."""
    spec = pod["spec"]
    if backend is GangScheduler.KUBERNETES:
        spec["schedulingGroup"] = {"podGroupName": job.name}
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
