"""Render an MLJob into the exact children the operator creates: one pod per replica and ONE
headless service. A pure function of the job, its framework and the plugins' pod mutations.

``mljob render FILE`` prints this, the operator creates this, and the tests validate this
against the Kubernetes OpenAPI schema, so what a user previews is what runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mljob.api import GangScheduler, MLJob, RestartPolicy
from mljob.core import placement, progress
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.names import LABEL_SPEC_HASH
from mljob.core.status import spec_hash
from mljob.framework import Address, Elastic, Framework, Replica, replicas_of
from mljob.plugins import PluginError

if TYPE_CHECKING:
    from mljob.plugins import Plugins

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
"""The owner uid written when rendering from a file, before the API server has assigned one."""

POD_RESTART_POLICY = {
    RestartPolicy.ALWAYS: "Always",
    RestartPolicy.ON_FAILURE: "OnFailure",
    RestartPolicy.NEVER: "Never",
    RestartPolicy.EXIT_CODE: "Never",  # the operator decides, by exit code, whether to recreate
}


def wiring_container(containers: list[dict[str, Any]], framework: Framework) -> int | None:
    """Index of the container that gets the wiring: the one named after the framework, or the only one."""
    for i, container in enumerate(containers):
        if container.get("name") == framework.container_name:
            return i
    return 0 if len(containers) == 1 else None


def role_port(job: MLJob, framework: Framework, role: str) -> int:
    """The role's port: the wiring container's port named ``framework.port_name``, else the default."""
    spec = job.spec.replica_specs[role]
    containers = spec.template.get("spec", {}).get("containers", [])
    index = wiring_container(containers, framework)
    if index is not None and framework.port_name:
        for port in containers[index].get("ports") or ():
            if port.get("name") == framework.port_name and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    known = framework.role(role)
    if known is None:
        raise KeyError(f"framework {framework.name!r} has no role {role!r}")
    return known.default_port


def restart_policy(job: MLJob, framework: Framework, role: str) -> RestartPolicy:
    return job.spec.replica_specs[role].restart_policy or framework.default_restart_policy


@dataclass(frozen=True)
class ServiceCluster:
    """Addresses in a Kubernetes cluster: the host the job's kind gives a replica (for an MLJob
    ``<pod>.<job>.<namespace>.svc``), and the role's port."""

    job: MLJob
    ports: Mapping[str, int]
    replicas: Mapping[str, int]
    kind: JobKind = MLJOB

    @classmethod
    def of(cls, job: MLJob, framework: Framework, kind: JobKind = MLJOB) -> ServiceCluster:
        specs = job.spec.replica_specs
        return cls(
            job=job,
            ports={role: role_port(job, framework, role) for role in specs},
            replicas={role: spec.replicas for role, spec in specs.items()},
            kind=kind,
        )

    def address(self, replica: Replica) -> Address:
        if not 0 <= replica.index < self.replicas[replica.role]:
            raise KeyError(f"{replica} is not a replica of job {self.job.name!r}")
        return Address(self.kind.host(self.job, replica), self.ports[replica.role])


def owner_reference(job: MLJob, uid: str | None = None, kind: JobKind = MLJOB) -> dict[str, Any]:
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "name": job.name,
        "uid": uid or job.metadata.uid or PLACEHOLDER_UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: MLJob, framework: Framework, replica: Replica, kind: JobKind = MLJOB) -> dict[str, str]:
    return kind.pod_labels(job, framework, replica)


def render_pod(
    job: MLJob,
    framework: Framework,
    replica: Replica,
    cluster: ServiceCluster,
    plugins: Plugins | None = None,
    uid: str | None = None,
    gang: GangScheduler = GangScheduler.NONE,
    fingerprint: str | None = None,
    kind: JobKind = MLJOB,
    endpoint: progress.Endpoint | None = None,
) -> dict[str, Any]:
    """The Pod for one replica, with the framework's wiring in its wiring container.

    With an ``endpoint`` (the operator serves progress reports), an MLJob's pods get Kubeflow Trainer's env and
    token (:func:`mljob.core.progress.pod_wiring`); Kubeflow's kinds keep the pods their operator made.

    Its ``mljob.io/spec-hash`` label is :func:`mljob.core.status.spec_hash` of the job (``fingerprint`` when the
    caller has it already): the operator reads from the pods which spec a running job started with.
    """
    template = job.spec.replica_specs[replica.role].template
    meta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    name = kind.pod_name(job.name, replica)
    containers: list[dict[str, Any]] = spec.get("containers") or []
    index = wiring_container(containers, framework)
    if index is not None:
        container = containers[index]
        wiring = framework.env(job, replica, cluster)
        container["env"] = [{"name": k, "value": v} for k, v in wiring.items()] + list(container.get("env") or [])
        port = cluster.ports[replica.role]
        ports = container.setdefault("ports", [])
        if not any(p.get("containerPort") == port for p in ports):
            ports.append({"name": framework.port_name or "mljob-port", "containerPort": port, "protocol": "TCP"})
    if not kind.service_per_replica:  # behind the job's one headless service; Kubeflow's have a service each
        spec["hostname"] = name
        spec["subdomain"] = job.name
    spec["restartPolicy"] = POD_RESTART_POLICY[restart_policy(job, framework, replica.role)]
    scheduling = job.spec.run_policy.scheduling_policy
    if scheduling is not None and scheduling.priority_class and "priorityClassName" not in spec:
        spec["priorityClassName"] = scheduling.priority_class
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {
                **(meta.get("labels") or {}),
                **labels(job, framework, replica, kind),
                LABEL_SPEC_HASH: fingerprint or fingerprint_of(job, framework),
            },
            "ownerReferences": [owner_reference(job, uid, kind)],
        },
        "spec": spec,
    }
    if meta.get("annotations"):
        pod["metadata"]["annotations"] = dict(meta["annotations"])
    placement.place_pod(job, gang, pod)
    if endpoint is not None and kind is MLJOB:
        progress.pod_wiring(pod, endpoint, job.namespace, job.name)
    if plugins is not None:
        plugins.mutate_pod(job, replica, pod)
    return pod


def elastic_of(job: MLJob, framework: Framework) -> Elastic | None:
    """The framework's :meth:`~mljob.framework.Framework.elastic` for ``job``; what it raises is its PluginError."""
    try:
        return framework.elastic(job)
    except Exception as error:
        raise PluginError(framework.name, "elastic", error) from error


def fingerprint_of(job: MLJob, framework: Framework) -> str:
    """The pods' ``mljob.io/spec-hash``: :func:`~mljob.core.status.spec_hash`, blind to an elastic role's count."""
    return spec_hash(job, elastic_of(job, framework))


def render_service(job: MLJob, framework: Framework, cluster: ServiceCluster, uid: str | None = None) -> dict[str, Any]:
    """The ONE headless service that gives every pod a stable DNS name, ready or not."""
    ports = sorted(set(cluster.ports.values()))
    kind = cluster.kind
    labels = kind.job_labels(job.name)
    if kind.labels.framework:
        labels[kind.labels.framework] = framework.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job, uid, kind)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": kind.job_labels(job.name),
            "ports": [{"name": f"port-{port}", "port": port, "targetPort": port, "protocol": "TCP"} for port in ports],
        },
    }


def render_replica_service(
    job: MLJob, framework: Framework, replica: Replica, cluster: ServiceCluster, uid: str | None = None
) -> dict[str, Any]:
    """Kubeflow's shape: a headless service per replica, named like its pod, selecting it by role and index.

    As training-operator writes it (``CreateNewService``): no ``publishNotReadyAddresses``, the role's port under
    the framework's port name, the job's labels with the replica's type and index.
    """
    kind = cluster.kind
    labels = {
        **kind.job_labels(job.name),
        kind.labels.role: replica.role.lower(),
        kind.labels.index: str(replica.index),
    }
    port = cluster.ports[replica.role]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": kind.pod_name(job.name, replica),
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job, uid, kind)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": dict(labels),
            "ports": [{"name": framework.port_name or "mljob-port", "port": port}],
        },
    }


JOB_OBJECT_KINDS = ("ConfigMap", "Secret")
"""What :meth:`Framework.objects` may return: what pods mount, and what the operator's role may create."""


def render_objects(
    job: MLJob, framework: Framework, cluster: ServiceCluster, uid: str | None = None, kind: JobKind = MLJOB
) -> list[dict[str, Any]]:
    """The framework's per-job objects, in the job's namespace, with its labels and owner; what the framework
    raises, or returns against the contract, is its PluginError (the job fails, no other)."""

    try:
        given_objects = list(framework.objects(job, cluster))
    except Exception as error:
        raise PluginError(framework.name, "objects", error) from error
    out = []
    for i, given in enumerate(given_objects):
        obj = copy.deepcopy(dict(given))
        what = f"objects()[{i}]"
        if obj.get("apiVersion") != "v1" or obj.get("kind") not in JOB_OBJECT_KINDS:
            wrong = ValueError(f"{what}: only v1 ConfigMap and Secret, got {obj.get('apiVersion')}/{obj.get('kind')}")
            raise PluginError(framework.name, "objects", wrong)
        meta = obj.setdefault("metadata", {})
        name = str(meta.get("name") or "")
        if not name.startswith(job.name):
            wrong = ValueError(f"{what}: metadata.name {name!r} must start with the job's name {job.name!r}")
            raise PluginError(framework.name, "objects", wrong)
        meta["namespace"] = job.namespace
        meta["labels"] = {**(meta.get("labels") or {}), **kind.job_labels(job.name)}
        meta["ownerReferences"] = [owner_reference(job, uid, kind)]
        out.append(obj)
    return out


def render(
    job: MLJob,
    framework: Framework,
    plugins: Plugins | None = None,
    uid: str | None = None,
    gang: GangScheduler = GangScheduler.NONE,
    kind: JobKind = MLJOB,
    endpoint: progress.Endpoint | None = None,
) -> list[dict[str, Any]]:
    """Every child of the job: what its gang scheduler reads, the pods in replica order, then the service(s).

    ``gang`` is the operator's default gang scheduler; the job's ``schedulingPolicy.gangScheduler`` wins.
    ``kind`` is the API kind the job came as: its labels, owner and services are that kind's.
    """
    cluster = ServiceCluster.of(job, framework, kind)
    backend = placement.gang_scheduler(job, gang)
    grouped = [
        *placement.objects(job, backend, owner_reference(job, uid, kind)),
        *render_objects(job, framework, cluster, uid, kind),
    ]
    fingerprint = fingerprint_of(job, framework)
    replicas = replicas_of(job)
    pods = [
        render_pod(job, framework, r, cluster, plugins, uid, backend, fingerprint, kind, endpoint) for r in replicas
    ]
    if kind.service_per_replica:
        return [*grouped, *pods, *(render_replica_service(job, framework, r, cluster, uid) for r in replicas)]
    return [*grouped, *pods, render_service(job, framework, cluster, uid)]
