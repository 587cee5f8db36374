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

from mljob.api import API_VERSION, KIND, GangScheduler, MLJob, RestartPolicy
from mljob.core import placement
from mljob.core.names import (
    LABEL_FRAMEWORK,
    LABEL_INDEX,
    LABEL_JOB,
    LABEL_LEADER,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    pod_name,
    service_host,
)
from mljob.core.status import spec_hash
from mljob.framework import Address, Framework, Replica, replicas_of

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
    """Addresses in a Kubernetes cluster: ``<pod>.<job>.<namespace>.svc:<port>``."""

    job: str
    namespace: str
    ports: Mapping[str, int]
    replicas: Mapping[str, int]

    @classmethod
    def of(cls, job: MLJob, framework: Framework) -> ServiceCluster:
        specs = job.spec.replica_specs
        return cls(
            job=job.name,
            namespace=job.namespace,
            ports={role: role_port(job, framework, role) for role in specs},
            replicas={role: spec.replicas for role, spec in specs.items()},
        )

    def address(self, replica: Replica) -> Address:
        if not 0 <= replica.index < self.replicas[replica.role]:
            raise KeyError(f"{replica} is not a replica of job {self.job!r}")
        return Address(service_host(self.job, self.namespace, replica), self.ports[replica.role])


def owner_reference(job: MLJob, uid: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": uid or job.metadata.uid or PLACEHOLDER_UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: MLJob, framework: Framework, replica: Replica) -> dict[str, str]:
    result = {
        LABEL_JOB: job.name,
        LABEL_FRAMEWORK: framework.name,
        LABEL_ROLE: replica.role.lower(),
        LABEL_INDEX: str(replica.index),
    }
    if framework.is_leader(job, replica):
        result[LABEL_LEADER] = "true"
    return result


def render_pod(
    job: MLJob,
    framework: Framework,
    replica: Replica,
    cluster: ServiceCluster,
    plugins: Plugins | None = None,
    uid: str | None = None,
    gang: GangScheduler = GangScheduler.NONE,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The Pod for one replica, with the framework's wiring in its wiring container.

    Its ``mljob.io/spec-hash`` label is :func:`mljob.core.status.spec_hash` of the job (``fingerprint`` when the
    caller has it already): the operator reads from the pods which spec a running job started with.
    """
    template = job.spec.replica_specs[replica.role].template
    meta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    name = pod_name(job.name, replica)
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
                **labels(job, framework, replica),
                LABEL_SPEC_HASH: fingerprint or spec_hash(job),
            },
            "ownerReferences": [owner_reference(job, uid)],
        },
        "spec": spec,
    }
    if meta.get("annotations"):
        pod["metadata"]["annotations"] = dict(meta["annotations"])
    placement.place_pod(job, gang, pod)
    if plugins is not None:
        plugins.mutate_pod(job, replica, pod)
    return pod


def render_service(job: MLJob, framework: Framework, cluster: ServiceCluster, uid: str | None = None) -> dict[str, Any]:
    """The ONE headless service that gives every pod a stable DNS name, ready or not."""
    ports = sorted(set(cluster.ports.values()))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": {LABEL_JOB: job.name, LABEL_FRAMEWORK: framework.name},
            "ownerReferences": [owner_reference(job, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.name},
            "ports": [{"name": f"port-{port}", "port": port, "targetPort": port, "protocol": "TCP"} for port in ports],
        },
    }


def render(
    job: MLJob,
    framework: Framework,
    plugins: Plugins | None = None,
    uid: str | None = None,
    gang: GangScheduler = GangScheduler.NONE,
) -> list[dict[str, Any]]:
    """Every child of the job: what its gang scheduler reads, the pods in replica order, then the service.

    ``gang`` is the operator's default gang scheduler; the job's ``schedulingPolicy.gangScheduler`` wins.
    """
    cluster = ServiceCluster.of(job, framework)
    backend = placement.gang_scheduler(job, gang)
    grouped = placement.objects(job, backend, owner_reference(job, uid))
    fingerprint = spec_hash(job)
    pods = [render_pod(job, framework, r, cluster, plugins, uid, backend, fingerprint) for r in replicas_of(job)]
    return [*grouped, *pods, render_service(job, framework, cluster, uid)]
