"""The Kubeflow front door: ``kubeflow.org/v1`` TFJob, PyTorchJob, MXJob, XGBoostJob, JAXJob and PaddleJob, served by
the one planner. Pure.

A :class:`KubeflowJobKind` maps each object to the :class:`~mljob.api.MLJob` the planner reads (the spec as
``mljob convert`` maps it, with Kubeflow's defaults; the status from Kubeflow's shape) and writes back what other
tools read exactly as training-operator v1 writes it (``pkg/controller.v1/common``):

* children: pods and one headless Service per replica, both named ``{job}-{type}-{i}``, labelled
  ``training.kubeflow.org/{job-name,operator-name,replica-type,replica-index}`` (``job-role=master`` on the kind's
  primary replica, ``IsMasterRole``), with a controller ownerReference to the job;
* addresses: ``{job}-{type}-{i}`` (TensorFlow: ``{job}-{type}-{i}.{namespace}.svc``), so the env a script reads
  names what Kubeflow's does;
* status: conditions Created, Running, Restarting, Succeeded, Failed, Suspended with Kubeflow's reasons
  (``PyTorchJobSucceeded``), newest last (what ``kubectl get``'s State column reads), Running and Restarting never
  both present; ``replicaStatuses`` with ``active``/``succeeded``/``failed`` (zeros left out) and ``selector`` /
  ``labelSelector``; ``startTime``, ``completionTime``, ``lastReconcileTime``.

Where mljob keeps its own way (docs/migrating-from-training-operator.md lists each): condition messages are mljob's;
the status also carries ``restartCount``, ``message`` and ``observedGeneration``; an absent ``backoffLimit`` is 6
(Kubeflow: unlimited); ``lastReconcileTime`` moves when the status changes, not on every pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mljob.api import API_VERSION, KIND, MLJobStatus, format_time
from mljob.core.convert import convert
from mljob.core.kinds import JobKind, Labels
from mljob.core.kubeflow import mpijob
from mljob.core.kubeflow.kinds import KINDS, MPIJOB
from mljob.core.names import pod_name
from mljob.core.status import merge_diff
from mljob.framework import Framework, Problem, Replica

if TYPE_CHECKING:
    from mljob.api import MLJob

GROUP = "kubeflow.org"
VERSION = "v1"
PREFIX = "training.kubeflow.org/"
LABELS = dict(
    job=f"{PREFIX}job-name",
    role=f"{PREFIX}replica-type",
    index=f"{PREFIX}replica-index",
    leader=(f"{PREFIX}job-role", "master"),
)
OPERATOR_LABEL = f"{PREFIX}operator-name"
MANAGED_BY = "kubeflow.org/training-operator"
"""The ``runPolicy.managedBy`` value that means "this operator" (Kubeflow's default)."""
MULTIKUEUE = "kueue.x-k8s.io/multikueue"
MANAGERS = (MANAGED_BY, MULTIKUEUE)
"""The ``managedBy`` values Kubeflow's webhook accepts."""
SUPPORTED_DROPS = {"status", "spec.runPolicy.managedBy", "spec.enableDynamicWorker", "spec.elasticPolicy.metrics"}
"""What ``convert`` leaves behind that the door handles itself (or that changes nothing here). An elastic
PyTorchJob's HPA ``metrics`` make no autoscaler here: the job runs, and the admission review warns
(:func:`.admission.warnings`) that an HPA of the user's own must target the PyTorchJob's scale subresource."""

Leads = Callable[[Mapping[str, Any], Replica], bool]


def _chief_or_worker0(specs: Mapping[str, Any], replica: Replica) -> bool:
    if "Chief" in specs or "Master" in specs:
        return replica.role in ("Chief", "Master")
    return replica.role == "Worker" and replica.index == 0


def _master_or_worker0(specs: Mapping[str, Any], replica: Replica) -> bool:
    if "Master" in specs:
        return replica.role == "Master"
    return replica.role == "Worker" and replica.index == 0


LEADS: dict[str, Leads] = {
    # Each controller's IsMasterRole (training-operator v1.9.3; MXJob v1.8.1).
    "TFJob": _chief_or_worker0,
    "PyTorchJob": _master_or_worker0,
    "MXJob": lambda specs, r: r.role == "Server",
    "XGBoostJob": lambda specs, r: r.role == "Master",
    "JAXJob": lambda specs, r: r.index == 0,
    "PaddleJob": lambda specs, r: r.role == "Master",
}
OPTIONS = {
    "nprocPerNode": "spec.nprocPerNode",
    "successPolicy": "spec.successPolicy",
    "elasticPolicy": "spec.elasticPolicy",
}
"""``frameworkOptions`` keys and the Kubeflow field each comes from."""


@dataclass(frozen=True)
class KubeflowJobKind(JobKind):
    """One of Kubeflow's v1 kinds; see the module docstring."""

    group: str = GROUP
    version: str = VERSION
    service_per_replica: bool = True
    owns_workload: bool = False
    gang_may_wait: bool = True
    framework: str = ""
    """The mljob framework plugin that wires the kind's replicas."""
    specs_field: str = ""
    fqdn: bool = False
    """Addresses are ``<service>.<namespace>.svc`` (TFJob's TF_CONFIG), not the bare service name."""
    leads_rule: Leads = field(default=_master_or_worker0, compare=False)

    @classmethod
    def of(cls, kind: str) -> KubeflowJobKind:
        facts = KINDS[kind]
        controller = f"{kind.lower()}-controller"  # each controller's controllerName
        return cls(
            kind=kind,
            plural=facts.plural,
            labels=Labels(**LABELS, constant={OPERATOR_LABEL: controller}),  # type: ignore[arg-type]
            framework=facts.framework,
            specs_field=facts.replica_specs_field,
            fqdn=kind == "TFJob",
            leads_rule=LEADS[kind],
        )

    @property
    def controller_name(self) -> str:
        """Kubeflow's ``operator-name`` label value (``pytorchjob-controller``)."""
        return self.labels.constant[OPERATOR_LABEL]

    def leads(self, job: MLJob, framework: Framework, replica: Replica) -> bool:
        return self.leads_rule(job.spec.replica_specs, replica)

    def host(self, job: MLJob, replica: Replica) -> str:
        name = pod_name(job.name, replica)
        return f"{name}.{job.namespace}.svc" if self.fqdn else name

    def status_patch(
        self, body: Mapping[str, Any], patch: dict[str, Any] | None, now: datetime
    ) -> dict[str, Any] | None:
        return status_patch(self, body, patch, now)

    def framework_of(self, body: Mapping[str, Any]) -> str:
        return self.framework

    def managed_elsewhere(self, body: Mapping[str, Any]) -> str | None:
        value = ((body.get("spec") or {}).get("runPolicy") or {}).get("managedBy")
        return str(value) if value and value != MANAGED_BY else None

    def path_of(self, path: str) -> str:
        head = "spec.replicaSpecs"
        if path == head or path.startswith(head + "."):
            return f"spec.{self.specs_field}" + path[len(head) :]
        for key, where in OPTIONS.items():
            option = f"spec.frameworkOptions.{key}"
            if path == option or path.startswith(option + "."):
                return where + path[len(option) :]
        if path == "spec.framework":
            return "kind"
        return path

    # --- the MLJob view ------------------------------------------------------------------------------------------

    def view(self, body: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Problem]]:
        """The object as an MLJob: the spec ``mljob convert`` makes of it with Kubeflow's defaults, and its status.

        What Kubeflow offers and mljob does not (MXNet tuning, an elastic policy's ``standalone``) is a problem with
        its path: the job fails with it rather than run as something else. An elastic PyTorchJob runs elastic, its
        policy as the PyTorch plugin's ``frameworkOptions.elasticPolicy``.
        """
        converted = convert({k: v for k, v in body.items() if k != "status"})
        problems = list(converted.problems)
        problems += [
            Problem(d.path, f"not supported by mljob: {d.message}")
            for d in converted.dropped
            if d.path not in SUPPORTED_DROPS
        ]
        job = converted.job or {"spec": {"framework": self.framework, "replicaSpecs": {}}}
        spec = dict(job.get("spec") or {})
        policy = dict(spec.get("runPolicy") or {})
        policy.setdefault("cleanPodPolicy", "None")  # every kind's default in Kubeflow's *_defaults.go
        spec["runPolicy"] = policy
        view: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": _metadata(body.get("metadata") or {}),
            "spec": spec,
        }
        status = body.get("status")
        if isinstance(status, Mapping) and status:
            view["status"] = self.mljob_status(status)
        return view, problems

    def mljob_status(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """A Kubeflow status read as an MLJob status (the planner's view of what it wrote before)."""
        prefix = self.kind
        conditions = []
        for c in status.get("conditions") or ():
            if not isinstance(c, Mapping) or c.get("type") not in CONDITION_TYPES:
                continue
            reason = str(c.get("reason") or "")
            if reason.startswith(prefix):
                reason = reason[len(prefix) :]
            entry = {"type": c["type"], "status": c.get("status", "Unknown"), "reason": reason}
            entry["message"] = str(c.get("message") or "")
            if c.get("lastTransitionTime"):
                entry["lastTransitionTime"] = c["lastTransitionTime"]
            conditions.append(entry)
        out: dict[str, Any] = {"conditions": conditions}
        replicas = {}
        for role, counts in (status.get("replicaStatuses") or {}).items():
            if isinstance(counts, Mapping):
                replicas[role] = {k: int(counts.get(k) or 0) for k in ("active", "succeeded", "failed")}
        out["replicaStatuses"] = replicas
        for key in ("startTime", "completionTime", "restartCount", "message", "observedGeneration"):
            if status.get(key) is not None:
                out[key] = status[key]
        return out

    def status(self, status: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        """The MLJob status as Kubeflow's ``JobStatus`` of this kind (without ``lastReconcileTime``: see
        :func:`status_patch`)."""
        name = str((body.get("metadata") or {}).get("name") or "")
        out: dict[str, Any] = {"conditions": self._conditions(status.get("conditions") or [])}
        succeeded = any(c.get("type") == "Succeeded" and c.get("status") == "True" for c in out["conditions"])
        replicas: dict[str, Any] = {}
        for role, counts in (status.get("replicaStatuses") or {}).items():
            labels = {**self.job_labels(name), self.labels.role: role.lower()}
            counts = dict(counts)
            if succeeded:  # Kubeflow's job.go: once the job succeeded, replicas still active count as succeeded
                counts["succeeded"] = int(counts.get("succeeded") or 0) + int(counts.get("active") or 0)
                counts["active"] = 0
            entry = {k: counts[k] for k in ("active", "succeeded", "failed") if counts.get(k)}
            entry["labelSelector"] = {"matchLabels": labels}
            entry["selector"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            replicas[role] = entry
        out["replicaStatuses"] = replicas
        for key in ("startTime", "completionTime", "message", "observedGeneration"):
            if status.get(key) not in (None, ""):
                out[key] = status[key]
        if status.get("restartCount"):
            out["restartCount"] = status["restartCount"]
        return out

    def _conditions(self, conditions: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Kubeflow's conditions: its reasons, newest transition last, Running and Restarting not side by side."""
        true = {c.get("type") for c in conditions if c.get("status") == "True"}
        out = []
        for c in conditions:
            kind, status = str(c.get("type")), str(c.get("status"))
            if kind in PAIR and status != "True" and (PAIR - {kind}) & true:
                continue  # Kubeflow's filterOutCondition: one of the pair, never both
            reason = f"{self.kind}Resumed" if kind == "Suspended" and status != "True" else f"{self.kind}{kind}"
            entry: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": c.get("message", "")}
            if c.get("lastTransitionTime"):
                entry["lastUpdateTime"] = entry["lastTransitionTime"] = c["lastTransitionTime"]
            out.append(entry)
        return sorted(out, key=lambda e: str(e.get("lastTransitionTime") or ""))


CONDITION_TYPES = ("Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
PAIR = {"Running", "Restarting"}

META_KEYS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
)


def _metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in META_KEYS if meta.get(k) is not None}


def status_patch(
    kind: KubeflowJobKind, body: Mapping[str, Any], mljob_patch: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any] | None:
    """The merge patch of ``body``'s status for the planner's MLJob-shaped ``mljob_patch`` (None: no change).

    The planner diffed against the MLJob view of ``body``; the patch is applied to that view, written in the kind's
    shape, and diffed against what ``body`` holds, so only what Kubeflow's shape shows can cause a write. A write
    stamps ``lastReconcileTime``.
    """
    if not mljob_patch:
        return None
    old_view = MLJobStatus.model_validate(kind.mljob_status(body.get("status") or {})).to_dict()
    new_view = _merged(old_view, mljob_patch)
    old = dict(body.get("status") or {})
    new = kind.status(new_view, body)
    old_cmp = {k: v for k, v in old.items() if k != "lastReconcileTime"}
    diff = merge_diff(old_cmp, new)
    if not diff:
        return None
    diff["lastReconcileTime"] = format_time(now)
    return diff


def _merged(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386: ``patch`` applied to ``target``."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


SSHD = ["sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -De"]
"""What a v1 MPIJob's worker runs when its first container has no command (training-operator ran ``sleep 365d``
there and reached it with ``kubectl exec``; mljob's launcher reaches workers over SSH)."""


@dataclass(frozen=True)
class MPIJobKind(KubeflowJobKind):
    """MPIJob: stored as the MPI Operator's v2beta1, served as training-operator's v1 too (:mod:`.mpijob`).

    Its children are written the way the operator of the job's API writes them (:func:`.mpijob.style_of`): the
    launcher's pod ``<job>-launcher``, workers ``<job>-worker-<i>`` behind ONE headless Service ``<job>`` (the MPI
    Operator's, which both styles use: the hostfile names ``<job>-worker-<i>.<job>.<namespace>.svc``), labelled
    ``training.kubeflow.org/{job-name,operator-name,replica-type,replica-index,job-role}``: ``operator-name``
    ``mpi-operator`` and ``job-role`` ``launcher``/``worker`` for v2beta1, ``mpijob-controller`` and ``job-role:
    master`` on the launcher for v1. ``replica-type`` is on both (v1's; the MPI Operator's pods lack it) and is the
    role the planner reads.
    """

    @classmethod
    def make(cls) -> MPIJobKind:
        return cls(
            kind=MPIJOB.kind,
            plural=MPIJOB.plural,
            version="v2beta1",
            labels=Labels(**LABELS),  # type: ignore[arg-type]
            framework=MPIJOB.framework,
            specs_field=MPIJOB.replica_specs_field,
            service_per_replica=False,
        )

    def selector(self) -> str:
        return f"{self.labels.job},{OPERATOR_LABEL} in ({','.join(mpijob.OPERATOR_NAMES)})"

    def job_labels(self, job: str) -> dict[str, str]:
        return {self.labels.job: job}

    def pod_labels(self, job: MLJob, framework: Framework, replica: Replica) -> dict[str, str]:
        style = mpijob.style_of({"annotations": job.metadata.annotations})
        labels = {
            self.labels.job: job.name,
            OPERATOR_LABEL: style.operator_name,
            self.labels.role: replica.role.lower(),
            self.labels.index: str(replica.index),
        }
        role = style.launcher_role if replica.role == mpijob.LAUNCHER else style.worker_role
        if role is not None:
            labels[self.labels.leader[0]] = role
        return labels

    def leads(self, job: MLJob, framework: Framework, replica: Replica) -> bool:
        return replica.role == mpijob.LAUNCHER

    def pod_name(self, job: str, replica: Replica) -> str:
        return f"{job}-launcher" if replica.role == mpijob.LAUNCHER else pod_name(job, replica)

    def host(self, job: MLJob, replica: Replica) -> str:
        return f"{self.pod_name(job.name, replica)}.{job.name}.{job.namespace}.svc"

    def managed_elsewhere(self, body: Mapping[str, Any]) -> str | None:
        value = ((body.get("spec") or {}).get("runPolicy") or {}).get("managedBy")
        return str(value) if value and value not in mpijob.THIS_OPERATOR else None

    def view(self, body: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Problem]]:
        """The MLJob view, with the defaults of the job's API: the MPI Operator's (Launcher OnFailure, Worker
        Never) or training-operator v1's (both Never, its spec-level cleanPodPolicy, a worker with no command
        running sshd)."""
        style = mpijob.style_of(body.get("metadata"))
        spec = dict(body.get("spec") or {})
        if style is mpijob.V1_STYLE:
            kept = mpijob.kept_fields(body.get("metadata"), mpijob.V1_FIELDS)
            spec.update({k: v for k, v in kept.items() if k in mpijob.V1_ONLY and k not in spec})
        view, problems = super().view({**body, "spec": spec})
        job_spec = view.get("spec") or {}
        for role, replica in (job_spec.get("replicaSpecs") or {}).items():
            default = style.launcher_restart if role == mpijob.LAUNCHER else style.worker_restart
            replica.setdefault("restartPolicy", default.value)
            if style is mpijob.V1_STYLE and role == mpijob.WORKER:
                containers = ((replica.get("template") or {}).get("spec") or {}).get("containers") or []
                if containers and isinstance(containers[0], dict) and not containers[0].get("command"):
                    containers[0]["command"] = list(SSHD)
        return view, problems


KUBEFLOW_KINDS: dict[str, KubeflowJobKind] = {
    **{kind: KubeflowJobKind.of(kind) for kind in KINDS},
    MPIJOB.kind: MPIJobKind.make(),
}
"""Every Kubeflow kind mljob can serve, by kind name."""
