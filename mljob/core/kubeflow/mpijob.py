"""MPIJob: the MPI Operator's ``kubeflow.org/v2beta1`` and training-operator's ``kubeflow.org/v1``, one CRD. Pure.

Both are versions of the one CRD ``mpijobs.kubeflow.org``, so a cluster serves both only through conversion. mljob's
choice: **v2beta1 is stored** (what Kueue's built-in ``kubeflow.org/mpijob`` integration and the MPI Operator's users
speak, and the only version still maintained), **v1 is served beside it through a conversion webhook** the operator
answers (:func:`conversion_review`), so ``kubeflow-training``'s SDK and Kubeflow's e2e suite keep creating v1 MPIJobs.
The two shapes differ in a few spec fields only (v1: ``mainContainer`` and a spec-level ``cleanPodPolicy``;
v2beta1: ``runLauncherAsWorker``, ``sshAuthMountPath``, ``launcherCreationPolicy``, ``mpiImplementation``); what one
version lacks rides in an annotation through the other, so a round trip loses nothing (the pattern the Kubernetes
docs give for conversion webhooks).

Which API a job was made with decides what other tools read of its children (:class:`Style`): the conversion of a v1
object to v2beta1 marks it ``mljob.io/created-as: kubeflow.org/v1`` once, and the v2beta1 -> v1 conversion marks an
unmarked one ``kubeflow.org/v2beta1``, so a v1 update of a v2beta1 job keeps its style.

Sources: ``pkg/apis/kubeflow/v2beta1/{types,default}.go`` and ``pkg/apis/kubeflow/validation/validation.go`` of
kubeflow/mpi-operator v0.8.0 (its CRD ``manifests/base/kubeflow.org_mpijobs.yaml``); ``mpi_types.go``,
``mpi_defaults.go``, ``mpi_validation.go`` and ``pkg/controller.v1/mpi/`` of training-operator v1.8.1.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, ValidationError

from mljob.core.kubeflow.admission import dns1035_errors, not_supported, required
from mljob.core.kubeflow.api import (
    METADATA_DESCRIPTION,
    MULTIKUEUE_CONTROLLER,
    RUN_POLICY_DESCRIPTION,
    STATUS_DESCRIPTION,
    CleanPodPolicy,
    Int32,
    JobCondition,
    JobSpec,
    JobStatus,
    KubeflowJob,
    KubeflowModel,
    ReplicaSpec,
    RestartPolicy,
    RunPolicy,
    SchedulingPolicy,
)
from mljob.core.schema import pod_template_problems
from mljob.core.validation import pydantic_problems
from mljob.framework import Problem

GROUP = "kubeflow.org"
V1 = f"{GROUP}/v1"
V2BETA1 = f"{GROUP}/v2beta1"
VERSIONS = (V2BETA1, V1)
"""The versions served, the stored one first."""
LAUNCHER = "Launcher"
WORKER = "Worker"
REPLICA_TYPES = (LAUNCHER, WORKER)

CREATED_AS = "mljob.io/created-as"
"""The annotation that says which API a job was made with (module docstring)."""
V1_FIELDS = "mljob.io/mpijob-v1-fields"
"""v1's spec fields that v2beta1 has no place for, as JSON, while the object is stored as v2beta1."""
V2BETA1_FIELDS = "mljob.io/mpijob-v2beta1-fields"
"""v2beta1's spec fields that v1 has no place for (those not at their defaults), as JSON, in a v1 view."""
V1_ONLY = ("cleanPodPolicy", "mainContainer")
V2BETA1_DEFAULTS: Mapping[str, Any] = {
    "runLauncherAsWorker": False,
    "sshAuthMountPath": "/root/.ssh",
    "launcherCreationPolicy": "AtStartup",
    "mpiImplementation": "OpenMPI",
}
"""v2beta1's spec fields v1 lacks, with the CRD's defaults (which the API server puts back on every read)."""

MPI_OPERATOR = "kubeflow.org/mpi-operator"
"""``runPolicy.managedBy`` for a v2beta1 job the MPI Operator (here: mljob in its place) reconciles."""
TRAINING_OPERATOR = "kubeflow.org/training-operator"
"""training-operator's own value, which a v1 job may carry: accepted as this operator too."""
MANAGED_BY_VALUES = tuple(sorted((MPI_OPERATOR, MULTIKUEUE_CONTROLLER)))
"""What the MPI Operator's validation accepts (``validManagedBy``, sorted as ``sets.List`` gives them)."""
THIS_OPERATOR = (MPI_OPERATOR, TRAINING_OPERATOR)


class LauncherCreationPolicy(StrEnum):
    """When the launcher's pod is made: with the workers, or once every worker is Ready."""

    AT_STARTUP = "AtStartup"
    WAIT_FOR_WORKERS_READY = "WaitForWorkersReady"


class MPIImplementation(StrEnum):
    """The MPI the image runs: it decides the launcher's variables and the hostfile's format."""

    OPENMPI = "OpenMPI"
    INTEL = "Intel"
    MPICH = "MPICH"


# --- training-operator v1.8.1: kubeflow.org/v1 MPIJob ---------------------------------------------------------------


class MPIJobSpecV1(JobSpec):
    """The desired state of a v1 MPIJob."""

    REPLICA_SPECS = "mpi_replica_specs"

    slots_per_worker: Int32 | None = Field(None, description="Slots (MPI processes) per worker in the hostfile.")
    clean_pod_policy: CleanPodPolicy | None = Field(None, description="Deprecated: use runPolicy.cleanPodPolicy.")
    mpi_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Launcher, Worker) -> replica spec.")
    main_container: str | None = Field(
        None, description="The container the launcher reaches in each worker; the first one when unset."
    )


class MPIJobV1(KubeflowJob):
    """training-operator's v1 MPIJob: one Launcher runs mpirun over the Workers."""

    kind: Literal["MPIJob"] = Field(description="MPIJob.")
    spec: MPIJobSpecV1 | None = Field(None, description="The desired state of the MPIJob.")


# --- the MPI Operator v0.8.0: kubeflow.org/v2beta1 MPIJob ------------------------------------------------------------


class SchedulingPolicyV2(SchedulingPolicy):
    """What gang schedulers and queues need to know about the job (no rule on ``queue``, as the MPI Operator's CRD)."""

    queue: str | None = Field(None, description="The queue of a batch scheduler (Volcano).")


class RunPolicyV2(RunPolicy):
    """Runtime policies of the job: cleanup, deadlines, retries, scheduling, suspension."""

    scheduling_policy: SchedulingPolicyV2 | None = Field(None, description="Gang scheduling and queueing.")
    managed_by: str | None = Field(
        None,
        description=(
            "The controller that reconciles the job: kubeflow.org/mpi-operator (also when unset) or "
            "kueue.x-k8s.io/multikueue (left to Kueue). Immutable."
        ),
    )


class JobStatusV2(JobStatus):
    """The observed state of a v2beta1 MPIJob: its conditions are a map keyed by type."""

    conditions: list[JobCondition] | None = Field(
        None,
        description="The observed conditions of the job, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class MPIJobSpecV2(KubeflowModel):
    """The desired state of a v2beta1 MPIJob."""

    REPLICA_SPECS: ClassVar[str] = "mpi_replica_specs"

    slots_per_worker: Int32 = Field(1, description="Slots (MPI processes) per worker in the hostfile.")
    run_launcher_as_worker: StrictBool = Field(False, description="Run worker processes in the launcher too.")
    run_policy: RunPolicyV2 = Field(default_factory=RunPolicyV2, description=RUN_POLICY_DESCRIPTION)
    mpi_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Launcher, Worker) -> replica spec.")
    ssh_auth_mount_path: str = Field("/root/.ssh", description="Where the job's SSH keys are mounted.")
    launcher_creation_policy: LauncherCreationPolicy = Field(
        LauncherCreationPolicy.AT_STARTUP,
        description="AtStartup (with the workers) or WaitForWorkersReady (once every worker is Ready).",
    )
    mpi_implementation: MPIImplementation = Field(MPIImplementation.OPENMPI, description="OpenMPI, Intel or MPICH.")

    @property
    def replica_specs(self) -> dict[str, ReplicaSpec]:
        return self.mpi_replica_specs


class MPIJobV2(KubeflowModel):
    """The MPI Operator's v2beta1 MPIJob: one Launcher runs mpirun over the Workers' sshd."""

    api_version: Literal["kubeflow.org/v2beta1"] = Field(description="kubeflow.org/v2beta1.")
    kind: Literal["MPIJob"] = Field(description="MPIJob.")
    metadata: dict[str, Any] = Field(default_factory=dict, description=METADATA_DESCRIPTION)
    spec: MPIJobSpecV2 | None = Field(None, description="The desired state of the MPIJob.")
    status: JobStatusV2 | None = Field(None, description=STATUS_DESCRIPTION)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")


MODELS: Mapping[str, type[KubeflowModel]] = {V2BETA1: MPIJobV2, V1: MPIJobV1}
"""apiVersion -> its model."""


# --- which API a job was made with ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """What a job's children carry, as the operator its API came from writes them."""

    api_version: str
    operator_name: str
    """``training.kubeflow.org/operator-name``."""
    launcher_role: str | None
    """``training.kubeflow.org/job-role`` on the launcher: ``launcher`` (v2beta1) or ``master`` (v1)."""
    worker_role: str | None
    """``training.kubeflow.org/job-role`` on a worker: ``worker`` (v2beta1), none (v1)."""
    launcher_restart: RestartPolicy
    worker_restart: RestartPolicy


V2BETA1_STYLE = Style(V2BETA1, "mpi-operator", "launcher", "worker", RestartPolicy.ON_FAILURE, RestartPolicy.NEVER)
V1_STYLE = Style(V1, "mpijob-controller", "master", None, RestartPolicy.NEVER, RestartPolicy.NEVER)
OPERATOR_NAMES = (V2BETA1_STYLE.operator_name, V1_STYLE.operator_name)


def style_of(metadata: Mapping[str, Any] | None) -> Style:
    """The job's style, from the annotation the conversion webhook leaves (none: v2beta1, the stored version)."""
    annotations = (metadata or {}).get("annotations") or {}
    return V1_STYLE if annotations.get(CREATED_AS) == V1 else V2BETA1_STYLE


# --- conversion ------------------------------------------------------------------------------------------------------


class ConversionError(ValueError):
    """An object that cannot be converted (an unknown version, a kind not MPIJob)."""


def convert_object(obj: Mapping[str, Any], desired: str) -> dict[str, Any]:
    """``obj`` (an MPIJob of either version) as ``desired``; only ``apiVersion``, the spec and the annotations change,
    as a conversion webhook may."""
    source = obj.get("apiVersion")
    if desired not in VERSIONS or source not in VERSIONS:
        raise ConversionError(f"converts MPIJob between {' and '.join(VERSIONS)}, not {source} to {desired}")
    if obj.get("kind") != "MPIJob":
        raise ConversionError(f"converts MPIJob, not {obj.get('kind')}")
    out = copy.deepcopy(dict(obj))
    if source == desired:
        return out
    out["apiVersion"] = desired
    metadata = out.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    spec = out.get("spec")
    spec = dict(spec) if isinstance(spec, Mapping) else None
    if desired == V2BETA1:
        kept = _take(spec, V1_ONLY)
        restored = _load(annotations.pop(V2BETA1_FIELDS, None))
        annotations.setdefault(CREATED_AS, V1)
        own, other = V1_FIELDS, tuple(V2BETA1_DEFAULTS)
    else:
        kept = {k: v for k, v in _take(spec, tuple(V2BETA1_DEFAULTS)).items() if v != V2BETA1_DEFAULTS[k]}
        restored = _load(annotations.pop(V1_FIELDS, None))
        annotations.setdefault(CREATED_AS, V2BETA1)
        own, other = V2BETA1_FIELDS, V1_ONLY
    if kept:
        annotations[own] = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    if spec is not None:
        spec.update({k: v for k, v in restored.items() if k in other and k not in spec})
        out["spec"] = spec
    metadata["annotations"] = annotations
    return out


def _take(spec: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: spec.pop(key) for key in keys if spec is not None and key in spec}


def kept_fields(metadata: Mapping[str, Any] | None, annotation: str) -> dict[str, Any]:
    """The spec fields one version keeps for the other in ``annotation`` (:data:`V1_FIELDS`, ...)."""
    return _load(((metadata or {}).get("annotations") or {}).get(annotation))


def _load(text: str | None) -> dict[str, Any]:
    try:
        loaded = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def conversion_review(review: Mapping[str, Any]) -> dict[str, Any]:
    """The answer to an ``apiextensions.k8s.io/v1`` ConversionReview: every object as ``desiredAPIVersion``, or a
    Failure that says why (the API server then refuses the request with that message)."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", "")}
    try:
        desired = str(request.get("desiredAPIVersion") or "")
        response["convertedObjects"] = [convert_object(o, desired) for o in request.get("objects") or ()]
        response["result"] = {"status": "Success"}
    except ConversionError as error:
        response["result"] = {"status": "Failure", "message": str(error)}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview", "response": response}


# --- admission: the MPI Operator's validation, and training-operator v1's -------------------------------------------


def review(body: Any, old: Any = None) -> list[Problem]:
    """Every reason to refuse ``body`` (an MPIJob of either version; the webhook is sent v2beta1), with field paths.

    First what the API server checks (the version's model, every pod template against the Kubernetes schema), then
    the MPI Operator's ``ValidateMPIJob`` after its defaults, in its words; for a job made as v1, training-operator's
    ``ValidateV1MpiJobSpec`` too (each container named and with an image). Stricter than both, on purpose: a
    replica type other than Launcher and Worker is refused (the MPI Operator ignores it), and ``managedBy`` may not
    change.
    """
    if not isinstance(body, Mapping):
        return [Problem("", f"an MPIJob is a mapping, got {type(body).__name__}")]
    model = MODELS.get(str(body.get("apiVersion")))
    if model is None:
        return [Problem("apiVersion", f"must be one of {', '.join(VERSIONS)}, got {body.get('apiVersion')!r}")]
    if body.get("kind") != "MPIJob":
        return [Problem("kind", f"must be MPIJob, got {body.get('kind')!r}")]
    fields = {key: value for key, value in body.items() if key != "status"}
    try:
        job = model.model_validate(fields)
    except ValidationError as error:
        return pydantic_problems(error, model=model)
    specs = _replica_specs(job)
    problems = [
        problem
        for role, spec in specs.items()
        if spec.template is not None
        for problem in pod_template_problems(spec.template, f"spec.mpiReplicaSpecs.{role}.template")
    ]
    if problems:
        return problems
    return list(_validate(job, body, old))


def _replica_specs(job: KubeflowModel) -> dict[str, ReplicaSpec]:
    spec = getattr(job, "spec", None)
    return dict(spec.mpi_replica_specs) if spec is not None else {}


def _validate(job: KubeflowModel, body: Mapping[str, Any], old: Any) -> Iterator[Problem]:
    metadata = body.get("metadata") or {}
    style = V1_STYLE if body.get("apiVersion") == V1 else style_of(metadata)
    spec = getattr(job, "spec", None)
    specs = _replica_specs(job)
    name = str(metadata.get("name") or "")
    worker = specs.get(WORKER)
    replicas = worker.replicas if worker is not None and worker.replicas and worker.replicas > 0 else 1
    hostname = f"{name}-worker-{replicas - 1}"
    if errors := dns1035_errors(hostname):
        detail = f"will not able to create pod and service with invalid DNS label {json.dumps(hostname)}: "
        yield Problem("metadata.name", f"Invalid value: {json.dumps(name)}: {detail}{', '.join(errors)}")
    if spec is None:
        yield Problem("spec.mpiReplicaSpecs", required("must have replica specs"))
        return
    yield from _v2beta1_spec(spec, body)
    yield from _run_policy(spec.run_policy, _old_managed_by(old), old is not None)
    yield from _replicas(specs, style)


def _v2beta1_spec(spec: Any, body: Mapping[str, Any]) -> Iterator[Problem]:
    given = body.get("spec") or {}
    slots = spec.slots_per_worker
    if slots is not None and slots < 0:
        yield Problem("spec.slotsPerWorker", f"Invalid value: {slots}: must be greater than or equal to 0")
    if isinstance(spec, MPIJobSpecV2) and "sshAuthMountPath" in given and not spec.ssh_auth_mount_path:
        yield Problem("spec.sshAuthMountPath", required("must have a mount path for SSH credentials"))


def _run_policy(policy: RunPolicy, before: str | None, update: bool) -> Iterator[Problem]:
    path = "spec.runPolicy"
    for key, value in (
        ("ttlSecondsAfterFinished", policy.ttl_seconds_after_finished),
        ("activeDeadlineSeconds", policy.active_deadline_seconds),
        ("backoffLimit", policy.backoff_limit),
    ):
        if value is not None and value < 0:
            yield Problem(f"{path}.{key}", f"Invalid value: {value}: must be greater than or equal to 0")
    managed = policy.managed_by
    if managed is not None and managed not in (*MANAGED_BY_VALUES, TRAINING_OPERATOR):
        yield Problem(f"{path}.managedBy", not_supported(managed, MANAGED_BY_VALUES))
    if update and managed != before:
        yield Problem(f"{path}.managedBy", f"Invalid value: {json.dumps(managed)}: field is immutable")


def _old_managed_by(old: Any) -> str | None:
    if not isinstance(old, Mapping):
        return None
    value = ((old.get("spec") or {}).get("runPolicy") or {}).get("managedBy")
    return str(value) if value is not None else None


def _replicas(specs: Mapping[str, ReplicaSpec], style: Style) -> Iterator[Problem]:
    path = "spec.mpiReplicaSpecs"
    if not specs:
        yield Problem(path, required("must have replica specs"))
        return
    for role in specs:
        if role not in REPLICA_TYPES:
            yield Problem(f"{path}.{role}", not_supported(role, REPLICA_TYPES))
    launcher = specs.get(LAUNCHER)
    if launcher is None:
        yield Problem(f"{path}.{LAUNCHER}", required(f"must have {LAUNCHER} replica spec"))
    for role, spec in specs.items():
        if role not in REPLICA_TYPES:
            continue
        where = f"{path}.{role}"
        default = style.launcher_restart if role == LAUNCHER else style.worker_restart
        policy = spec.restart_policy or default
        allowed = (RestartPolicy.NEVER.value, RestartPolicy.ON_FAILURE.value)
        if policy not in allowed:
            yield Problem(f"{where}.restartPolicy", not_supported(policy, tuple(sorted(allowed))))
        if role == LAUNCHER and spec.replicas is not None and spec.replicas != 1:
            yield Problem(f"{where}.replicas", f"Invalid value: {spec.replicas}: must be 1")
        if role == WORKER and spec.replicas is not None and spec.replicas <= 0:
            yield Problem(f"{where}.replicas", f"Invalid value: {spec.replicas}: must be greater than or equal to 1")
        containers = [c for c in ((spec.template or {}).get("spec") or {}).get("containers") or () if c]
        if not containers:
            yield Problem(f"{where}.template.spec.containers", required("must define at least one container"))
        if style is V1_STYLE:  # training-operator v1's ValidateV1MpiJobSpec
            for i, container in enumerate(containers):
                if not isinstance(container, Mapping):
                    continue
                if not container.get("image"):
                    yield Problem(f"{where}.template.spec.containers[{i}].image", required("must be required"))
                if not container.get("name"):
                    yield Problem(f"{where}.template.spec.containers[{i}].name", required("must be required"))
