"""The API kinds the operator serves, and what differs between them. Pure.

One planner serves every kind. ``MLJob`` is mljob's own; Kubeflow's ``kubeflow.org/v1`` kinds (TFJob, PyTorchJob,
...) are a second front door (:mod:`mljob.core.kubeflow.door`). A :class:`JobKind` says, as data, what another tool
may read and so must be written that kind's way:

* where the objects live (group, version, plural) and the controller ownerReference their children carry;
* the children's labels (which key names the job, the role, the index, the coordinating replica);
* the services: mljob's ONE headless service per job, or Kubeflow's one per replica;
* the host a replica is reached at (what a framework's env names);
* whether mljob makes the job's Kueue ``Workload`` itself (an MLJob is Kueue's external framework) or Kueue's own
  integration does (Kueue's built-in ``kubeflow.org`` integrations).

Everything else (the rulebook, restarts, the ledger, placement) is the same for every kind. A kind also maps its
objects to and from the :class:`~mljob.api.MLJob` model the planner reads (:meth:`JobKind.view`,
:meth:`JobKind.status`); for MLJob both are the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mljob.api import (
    GROUP,
    KIND,
    MLJOB_CONTROLLER,
    MULTIKUEUE_CONTROLLER,
    PLURAL,
    VERSION,
    Condition,
    ConditionType,
    Phase,
)
from mljob.core.names import LABEL_FRAMEWORK, LABEL_INDEX, LABEL_JOB, LABEL_LEADER, LABEL_ROLE, pod_name
from mljob.core.status import derive_phase
from mljob.framework import Framework, Problem, Replica

if TYPE_CHECKING:
    from mljob.api import MLJob


@dataclass(frozen=True)
class Labels:
    """The label keys a kind's children carry; ``constant`` labels go on every child (Kubeflow's operator-name)."""

    job: str
    role: str
    index: str
    leader: tuple[str, str]
    """The key and value on the replica that coordinates the job."""
    framework: str | None = None
    constant: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobKind:
    """One kind of job object the operator serves; see the module docstring."""

    group: str = GROUP
    version: str = VERSION
    kind: str = KIND
    plural: str = PLURAL
    labels: Labels = Labels(LABEL_JOB, LABEL_ROLE, LABEL_INDEX, (LABEL_LEADER, "true"), LABEL_FRAMEWORK)
    service_per_replica: bool = False
    """Kubeflow's shape: a headless Service per replica, named like its pod. Else ONE per job, named like it."""
    owns_workload: bool = True
    """mljob makes the job's Kueue Workload (MLJob); False where Kueue's own integration does (Kubeflow's kinds)."""
    gang_may_wait: bool = False
    """A ``minAvailable`` above the job's replicas is accepted, the gang waiting until it is lowered (Kubeflow's
    kinds: its own gang e2e test creates such a job, then patches it); for an MLJob it is an error."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def path(self, namespace: str, name: str = "", subresource: str = "") -> str:
        """The REST path of the kind's objects in ``namespace`` (of one, and of its subresource)."""
        path = f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}"
        return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")

    def controls(self, ref: Mapping[str, Any]) -> bool:
        """Whether an ownerReference names an object of this kind as the controller."""
        group = str(ref.get("apiVersion", "")).split("/")[0]
        return bool(ref.get("controller")) and ref.get("kind") == self.kind and group == self.group

    def selector(self) -> str:
        """The label selector of every child of this kind's jobs (what the operator's watches ask for)."""
        return ",".join([self.labels.job, *(f"{k}={v}" for k, v in self.labels.constant.items())])

    def job_labels(self, job: str) -> dict[str, str]:
        """What selects every child of the job ``job``."""
        return {**self.labels.constant, self.labels.job: job}

    def pod_labels(self, job: MLJob, framework: Framework, replica: Replica) -> dict[str, str]:
        labels = self.job_labels(job.name)
        if self.labels.framework:
            labels[self.labels.framework] = framework.name
        labels[self.labels.role] = replica.role.lower()
        labels[self.labels.index] = str(replica.index)
        if self.leads(job, framework, replica):
            labels[self.labels.leader[0]] = self.labels.leader[1]
        return labels

    def leads(self, job: MLJob, framework: Framework, replica: Replica) -> bool:
        """Whether ``replica`` is the one the leader label marks: the framework says, for MLJob."""
        return framework.is_leader(job, replica)

    def pod_name(self, job: str, replica: Replica) -> str:
        """The name of ``replica``'s pod: ``<job>-<role>-<index>`` (:func:`mljob.core.names.pod_name`)."""
        return pod_name(job, replica)

    def host(self, job: MLJob, replica: Replica) -> str:
        """Where ``replica`` is reached: ``<pod>.<job>.<namespace>.svc``, behind the job's one headless service."""
        return f"{self.pod_name(job.name, replica)}.{job.name}.{job.namespace}.svc"

    def replica_of(self, labels: Mapping[str, str]) -> tuple[str, int] | None:
        """(lower-case role, index) from a child's labels."""
        role, index = labels.get(self.labels.role), labels.get(self.labels.index)
        if not role or not str(index or "").isdigit():
            return None
        return str(role), int(str(index))

    # --- the mapping to and from the model the planner reads ----------------------------------------------------

    def view(self, body: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Problem]]:
        """The object as an MLJob body (spec and status); problems that keep it from being one, with paths."""
        return body, []

    def status(self, status: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        """The MLJob status the planner wrote, in this kind's shape (``body`` is the object as it is)."""
        return dict(status)

    def status_patch(
        self, body: Mapping[str, Any], patch: dict[str, Any] | None, now: datetime
    ) -> dict[str, Any] | None:
        """The planner's status merge patch (over the MLJob view of ``body``) as this kind's: MLJob's is itself."""
        return patch

    def framework_of(self, body: Mapping[str, Any]) -> str:
        """The framework plugin a job of this kind names."""
        return str((body.get("spec") or {}).get("framework") or "")

    def phase_of(self, body: Mapping[str, Any]) -> Phase:
        """The one phase a person reads, from the job's conditions (the same types in every kind)."""
        conditions = (body.get("status") or {}).get("conditions") or ()
        true = [Condition.model_validate(c) for c in conditions if isinstance(c, Mapping) and _true(c)]
        return derive_phase(true)

    def path_of(self, path: str) -> str:
        """A field path of the MLJob view as the same field's path in this kind's objects."""
        return path

    def managed_elsewhere(self, body: Mapping[str, Any]) -> str | None:
        """The other controller that manages ``body`` (its ``managedBy``), or None when it is this operator's.

        MultiKueue's jobs are this operator's on the manager too (it queues them: :func:`dispatched`)."""
        value = (body.get("spec") or {}).get("managedBy")
        return str(value) if value and value not in (MLJOB_CONTROLLER, MULTIKUEUE_CONTROLLER) else None


def _true(condition: Mapping[str, Any]) -> bool:
    return condition.get("status") == "True" and condition.get("type") in {t.value for t in ConditionType}


def dispatched(job: MLJob) -> bool:
    """Whether Kueue's MultiKueue runs ``job`` on a worker cluster (``spec.managedBy: kueue.x-k8s.io/multikueue``):
    here, on the manager, the operator only queues it."""
    return job.spec.managed_by == MULTIKUEUE_CONTROLLER


MLJOB = JobKind()
"""mljob's own kind: ``mljob.io/v1alpha1`` MLJob."""
