"""Kubeflow training-operator's ``kubeflow.org/v1`` API as pydantic models, field for field as its Go types.

Sources: ``pkg/apis/kubeflow.org/v1/{common,tensorflow,pytorch,xgboost,jax,paddlepaddle}_types.go`` of
training-operator v1.9.3 and ``mxnet_types.go`` of v1.8.1 (the last release with MXJob). Field names, JSON names,
required fields and the one CRD default (``runPolicy.suspend: false``) are Kubeflow's; no other default is set
here: Kubeflow applies its defaults in the controller (``*_defaults.go``; the values are in :mod:`.kinds`).

Unknown fields are kept, not rejected (``extra="allow"``): Kubeflow's CRDs prune them, so an object read from the
API server never has any, and a file's are found with :func:`unknown_fields` (the API server would drop them, and
``kubectl --validate=strict`` would refuse them) instead of failing the parse. What the Go types leave open
(a restart policy, a condition type, a string) the models narrow to Kubeflow's constants; the CRDs keep them plain
strings as Kubeflow's do, and :mod:`.admission` reports a value outside them with its field path.

Pod templates stay plain dicts, as in :mod:`mljob.api`: mljob checks them against the real Kubernetes OpenAPI
schema (:mod:`mljob.core.schema`). Elastic policies' HPA ``metrics`` are modelled (autoscaling/v2 ``MetricSpec``)
because Kubeflow's CRDs spell them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from mljob import api
from mljob.api import Model, Time

GROUP = "kubeflow.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

KUBEFLOW_JOBS_CONTROLLER = "kubeflow.org/training-operator"
"""``runPolicy.managedBy`` for a job the training-operator (here: mljob in its place) reconciles."""
MULTIKUEUE_CONTROLLER = "kueue.x-k8s.io/multikueue"
"""``runPolicy.managedBy`` for a job Kueue's MultiKueue runs on another cluster: left alone here."""
MANAGED_BY_VALUES = (KUBEFLOW_JOBS_CONTROLLER, MULTIKUEUE_CONTROLLER)
"""The values Kubeflow's webhooks accept (``pkg/common/util/webhooks.go``), sorted."""

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""``resource.Quantity``'s pattern, as controller-gen writes it into a CRD."""


def _int32(value: int) -> int:
    if not -(2**31) <= value < 2**31:
        raise PydanticCustomError(
            "int32", "must fit in 32 bits (an int32 in Kubeflow's Go types), got {value}", {"value": value}
        )
    return value


def _int64(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise PydanticCustomError(
            "int64", "must fit in 64 bits (an int64 in Kubeflow's Go types), got {value}", {"value": value}
        )
    return value


Int32 = Annotated[StrictInt, AfterValidator(_int32), WithJsonSchema({"type": "integer", "format": "int32"})]
Int64 = Annotated[StrictInt, AfterValidator(_int64), WithJsonSchema({"type": "integer", "format": "int64"})]
_QUANTITY = re.compile(QUANTITY_PATTERN)


def _quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _QUANTITY.fullmatch(value):  # not match: `$` also matches before a final newline
        return value
    raise PydanticCustomError(
        "quantity", "must be a Kubernetes quantity (e.g. 2, 500m, 4Gi), got {value}", {"value": repr(value)}
    )


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes ``resource.Quantity``: ``2``, ``500m``, ``4Gi``."""

ATOMIC_LIST: JsonDict = {"x-kubernetes-list-type": "atomic"}


class KubeflowModel(Model):
    """Base of every model here: :class:`mljob.api.Model`'s camelCase aliases and immutability; unknown fields kept
    (see the module's docstring)."""

    model_config = ConfigDict(extra="allow")


# --- enums: Kubeflow's constants (plain strings in its CRDs) ------------------------------------------------------


# Kubeflow's restart and clean-pod policies and condition types are mljob's own, value for value (ExitCode: exit
# codes 1-127 are permanent, 128-255 retried).
RestartPolicy = api.RestartPolicy
CleanPodPolicy = api.CleanPodPolicy
JobConditionType = api.ConditionType


class SuccessPolicy(StrEnum):
    """When a TFJob has succeeded: "" the default rule (the chief, else worker 0), or all workers."""

    DEFAULT = ""
    ALL_WORKERS = "AllWorkers"


class RDZVBackend(StrEnum):
    """torchrun's rendezvous backend."""

    C10D = "c10d"
    ETCD = "etcd"
    ETCD_V2 = "etcd-v2"


class JobModeType(StrEnum):
    """An MXJob's mode: training (Scheduler, Server, Worker) or auto-tuning (Tuner, TunerTracker, TunerServer)."""

    MX_TRAIN = "MXTrain"
    MX_TUNE = "MXTune"


# --- common types (common_types.go) ---------------------------------------------------------------------------------


class ReplicaSpec(KubeflowModel):
    """One replica type of a job: how many, how they restart, and their pod template."""

    replicas: Int32 | None = Field(None, description="Desired number of replicas; Kubeflow's default is 1.")
    template: dict[str, Any] | None = Field(
        None,
        description=(
            "The pod template (a Kubernetes PodTemplateSpec) of this replica type; its restartPolicy is overridden "
            "by the replica's. Checked against the Kubernetes OpenAPI schema by mljob's admission."
        ),
    )
    restart_policy: RestartPolicy | None = Field(
        None, description="Always, OnFailure, Never or ExitCode; the default depends on the kind."
    )


class SchedulingPolicy(KubeflowModel):
    """What gang schedulers and queues need to know about the job."""

    min_available: Int32 | None = Field(None, description="Pods that must be schedulable together.")
    queue: str | None = Field(
        None,
        description="The queue of a batch scheduler. Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"message": "spec.runPolicy.schedulingPolicy.queue is immutable", "rule": "self == oldSelf"}
            ]
        },
    )
    min_resources: dict[str, Quantity] | None = Field(
        None, description="Resources the gang needs before any pod starts (a ResourceList)."
    )
    priority_class: str | None = Field(None, description="The PriorityClass of the job's pods.")
    schedule_timeout_seconds: Int32 | None = Field(
        None, description="Seconds the gang may wait to be scheduled before the job fails."
    )


class RunPolicy(KubeflowModel):
    """Runtime policies of the job: cleanup, deadlines, retries, scheduling, suspension."""

    clean_pod_policy: CleanPodPolicy | None = Field(
        None, description="Which pods to delete when the job finishes: All, Running or None (Kubeflow's default)."
    )
    ttl_seconds_after_finished: Int32 | None = Field(
        None, description="Seconds after the job finishes after which it is deleted; default: never."
    )
    active_deadline_seconds: Int64 | None = Field(
        None, description="Seconds from startTime the job may be active before it is terminated; positive."
    )
    backoff_limit: Int32 | None = Field(None, description="Retries before the job is marked failed.")
    scheduling_policy: SchedulingPolicy | None = Field(None, description="Gang scheduling and queueing.")
    suspend: StrictBool = Field(
        False,
        description=(
            "Whether pods are created: suspending a running job deletes its active pods and PodGroups and resets "
            "startTime."
        ),
    )
    managed_by: str | None = Field(
        None,
        description=(
            "The controller that reconciles the job: kubeflow.org/training-operator (also when unset) or "
            "kueue.x-k8s.io/multikueue (left to Kueue). Immutable."
        ),
    )


class LabelSelectorRequirement(KubeflowModel):
    """A label selector requirement: a key, an operator and values."""

    key: str = Field(description="The label key the selector applies to.")
    operator: str = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(
        None, description="Values for In and NotIn; empty for Exists and DoesNotExist.", json_schema_extra=ATOMIC_LIST
    )


class LabelSelector(KubeflowModel):
    """A Kubernetes label selector (metav1.LabelSelector)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-map-type": "atomic"})

    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, description="Requirements, ANDed.", json_schema_extra=ATOMIC_LIST
    )
    match_labels: dict[str, str] | None = Field(None, description="Labels that must all match.")


class JobCondition(KubeflowModel):
    """The state of the job at a certain point."""

    type: JobConditionType = Field(description="The type of the condition.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(None, description="The reason for the last transition.")
    message: str | None = Field(None, description="A human readable message about the transition.")
    last_update_time: Time | None = Field(None, description="When the condition was last updated.")
    last_transition_time: Time | None = Field(None, description="When the status last changed.")


class ReplicaStatus(KubeflowModel):
    """The observed state of one replica type."""

    active: Int32 | None = Field(None, description="Pods actively running.")
    succeeded: Int32 | None = Field(None, description="Pods that reached phase Succeeded.")
    failed: Int32 | None = Field(None, description="Pods that reached phase Failed.")
    label_selector: LabelSelector | None = Field(None, description="Deprecated: use selector.")
    selector: str | None = Field(None, description="A label selector over the replica type's pods, as a string.")


class JobStatus(KubeflowModel):
    """The observed state of a job."""

    conditions: list[JobCondition] | None = Field(None, description="The observed conditions of the job.")
    replica_statuses: dict[str, ReplicaStatus] | None = Field(None, description="Replica type -> its status.")
    start_time: Time | None = Field(None, description="When the job was acknowledged by the controller.")
    completion_time: Time | None = Field(None, description="When the job completed.")
    last_reconcile_time: Time | None = Field(None, description="When the job was last reconciled.")
    # mljob's additions (docs/migrating-from-training-operator.md): what the planner needs to read back, and what a
    # person acts on. No tool that reads Kubeflow's status is disturbed by fields it does not know.
    message: str | None = Field(
        None, description="mljob: the latest thing a person should know, naming replica and cause."
    )
    restart_count: Int32 | None = Field(None, description="mljob: restarts counted against backoffLimit.")
    observed_generation: int | None = Field(None, description="mljob: the spec generation this status reflects.")


# --- autoscaling/v2 MetricSpec: the HPA metrics of an elastic policy ----------------------------------------------


class MetricTarget(KubeflowModel):
    """The target value, average value or average utilization of a metric."""

    type: str = Field(description="Utilization, Value or AverageValue.")
    value: Quantity | None = Field(None, description="The target value of the metric.")
    average_value: Quantity | None = Field(None, description="The target value of the average across pods.")
    average_utilization: Int32 | None = Field(
        None, description="The target average utilization, a percentage of the pods' requests."
    )


class MetricIdentifier(KubeflowModel):
    """A metric by name and selector."""

    name: str = Field(description="The name of the metric.")
    selector: LabelSelector | None = Field(None, description="Narrows the metric's scope.")


class CrossVersionObjectReference(KubeflowModel):
    """A reference to an object."""

    kind: str = Field(description="Kind of the referent.")
    name: str = Field(description="Name of the referent.")
    api_version: str | None = Field(None, description="API version of the referent.")


class ObjectMetricSource(KubeflowModel):
    """A metric describing a single Kubernetes object."""

    described_object: CrossVersionObjectReference = Field(description="The object the metric describes.")
    target: MetricTarget = Field(description="The target value.")
    metric: MetricIdentifier = Field(description="The metric.")


class PodsMetricSource(KubeflowModel):
    """A metric describing each pod, averaged."""

    metric: MetricIdentifier = Field(description="The metric.")
    target: MetricTarget = Field(description="The target value.")


class ResourceMetricSource(KubeflowModel):
    """A resource metric (CPU, memory) of each pod."""

    name: str = Field(description="The name of the resource.")
    target: MetricTarget = Field(description="The target value.")


class ContainerResourceMetricSource(KubeflowModel):
    """A resource metric of one container of each pod."""

    name: str = Field(description="The name of the resource.")
    target: MetricTarget = Field(description="The target value.")
    container: str = Field(description="The name of the container.")


class ExternalMetricSource(KubeflowModel):
    """A metric not associated with any Kubernetes object."""

    metric: MetricIdentifier = Field(description="The metric.")
    target: MetricTarget = Field(description="The target value.")


class MetricSpec(KubeflowModel):
    """One metric an autoscaler scales on (autoscaling/v2 MetricSpec)."""

    type: str = Field(description="ContainerResource, External, Object, Pods or Resource.")
    object_: ObjectMetricSource | None = Field(None, alias="object", description="An object's metric.")
    pods: PodsMetricSource | None = Field(None, description="A metric of each pod.")
    resource: ResourceMetricSource | None = Field(None, description="A resource metric of each pod.")
    container_resource: ContainerResourceMetricSource | None = Field(
        None, description="A resource metric of one container of each pod."
    )
    external: ExternalMetricSource | None = Field(None, description="A metric from outside the cluster.")


# --- PyTorch and Paddle elastic policies ---------------------------------------------------------------------------


class RDZVConf(KubeflowModel):
    """One additional rendezvous setting (key=value)."""

    key: str | None = Field(None, description="The setting's key.")
    value: str | None = Field(None, description="The setting's value.")


class ElasticPolicy(KubeflowModel):
    """A PyTorchJob's elastic training: the world size between min and max replicas, torchrun's rendezvous."""

    min_replicas: Int32 | None = Field(None, description="The lower limit of Worker replicas.")
    max_replicas: Int32 | None = Field(None, description="The upper limit of Worker replicas; at least minReplicas.")
    rdzv_backend: RDZVBackend | None = Field(None, description="c10d, etcd or etcd-v2.")
    rdzv_port: Int32 | None = Field(None, description="The rendezvous port.")
    rdzv_host: str | None = Field(None, description="The rendezvous host.")
    rdzv_id: str | None = Field(None, description="The rendezvous id.")
    rdzv_conf: list[RDZVConf] | None = Field(None, description="Additional rendezvous configuration.")
    standalone: StrictBool | None = Field(
        None, description="Start a local standalone rendezvous backend (a C10d TCP store on port 29400)."
    )
    n_proc_per_node: Int32 | None = Field(None, description="Deprecated since v1.7: use spec.nprocPerNode.")
    max_restarts: Int32 | None = Field(None, description="torchrun's --max-restarts.")
    metrics: list[MetricSpec] | None = Field(
        None, description="Metrics a HorizontalPodAutoscaler scales the workers on; none: no autoscaler."
    )


class PaddleElasticPolicy(KubeflowModel):
    """A PaddleJob's elastic training."""

    min_replicas: Int32 | None = Field(None, description="The lower limit of Worker replicas.")
    max_replicas: Int32 | None = Field(None, description="The upper limit of Worker replicas; at least minReplicas.")
    max_restarts: Int32 | None = Field(None, description="Restarts of pods allowed in elastic mode.")
    metrics: list[MetricSpec] | None = Field(
        None, description="Metrics a HorizontalPodAutoscaler scales the workers on; none: no autoscaler."
    )


# --- the kinds -----------------------------------------------------------------------------------------------------

RUN_POLICY_DESCRIPTION = "Runtime policies of the job: cleanup, deadlines, retries, scheduling, suspension."


class JobSpec(KubeflowModel):
    """What every kind's spec has: a run policy and a map of replica type -> replica spec."""

    REPLICA_SPECS: ClassVar[str]
    """The Python name of the kind's replica-specs field."""

    run_policy: RunPolicy = Field(default_factory=RunPolicy, description=RUN_POLICY_DESCRIPTION)

    @property
    def replica_specs(self) -> dict[str, ReplicaSpec]:
        """The replica specs, whatever the kind calls the field."""
        specs: dict[str, ReplicaSpec] = getattr(self, self.REPLICA_SPECS)
        return specs


class TFJobSpec(JobSpec):
    """The desired state of a TFJob."""

    REPLICA_SPECS = "tf_replica_specs"

    success_policy: SuccessPolicy | None = Field(
        None, description='When the job has succeeded: "" (the chief, else worker 0) or AllWorkers.'
    )
    tf_replica_specs: dict[str, ReplicaSpec] = Field(
        description="Replica type (Chief, Master, PS, Worker, Evaluator) -> replica spec."
    )
    enable_dynamic_worker: StrictBool | None = Field(None, description="Enable dynamic workers.")


class PyTorchJobSpec(JobSpec):
    """The desired state of a PyTorchJob."""

    REPLICA_SPECS = "pytorch_replica_specs"

    elastic_policy: ElasticPolicy | None = Field(None, description="Elastic training with torchrun.")
    pytorch_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Master, Worker) -> replica spec.")
    nproc_per_node: str | None = Field(
        None, description="Processes per node: auto (Kubeflow's default), cpu, gpu or a number."
    )


class MXJobSpec(JobSpec):
    """The desired state of an MXJob."""

    REPLICA_SPECS = "mx_replica_specs"

    job_mode: JobModeType = Field(description="MXTrain or MXTune.")
    mx_replica_specs: dict[str, ReplicaSpec] = Field(
        description="Replica type (Scheduler, Server, Worker; Tuner, TunerTracker, TunerServer) -> replica spec."
    )


class XGBoostJobSpec(JobSpec):
    """The desired state of an XGBoostJob."""

    REPLICA_SPECS = "xgb_replica_specs"

    xgb_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Master, Worker) -> replica spec.")


class JAXJobSpec(JobSpec):
    """The desired state of a JAXJob."""

    REPLICA_SPECS = "jax_replica_specs"

    jax_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Worker) -> replica spec.")


class PaddleJobSpec(JobSpec):
    """The desired state of a PaddleJob."""

    REPLICA_SPECS = "paddle_replica_specs"

    elastic_policy: PaddleElasticPolicy | None = Field(None, description="Elastic training.")
    paddle_replica_specs: dict[str, ReplicaSpec] = Field(description="Replica type (Master, Worker) -> replica spec.")


API_VERSION_DESCRIPTION = "kubeflow.org/v1."
METADATA_DESCRIPTION = "Standard object metadata; checked by the API server."
STATUS_DESCRIPTION = "The most recently observed status of the job; written by the operator."


class KubeflowJob(KubeflowModel):
    """What every kind has; each kind's class narrows ``kind`` and ``spec``."""

    api_version: Literal["kubeflow.org/v1"] = Field(description=API_VERSION_DESCRIPTION)
    kind: str = Field(description="The kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description=METADATA_DESCRIPTION)
    spec: JobSpec | None = Field(None, description="The desired state of the job.")
    status: JobStatus | None = Field(None, description=STATUS_DESCRIPTION)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")


class TFJob(KubeflowJob):
    """A TFJob: distributed TensorFlow (Chief or Master, PS, Worker, Evaluator)."""

    kind: Literal["TFJob"] = Field(description="TFJob.")
    spec: TFJobSpec | None = Field(None, description="The desired state of the TFJob.")


class PyTorchJob(KubeflowJob):
    """A PyTorchJob: distributed PyTorch (Master, Worker), elastic with torchrun."""

    kind: Literal["PyTorchJob"] = Field(description="PyTorchJob.")
    spec: PyTorchJobSpec | None = Field(None, description="The desired state of the PyTorchJob.")


class MXJob(KubeflowJob):
    """An MXJob: distributed MXNet (Scheduler, Server, Worker) or auto-tuning."""

    kind: Literal["MXJob"] = Field(description="MXJob.")
    spec: MXJobSpec | None = Field(None, description="The desired state of the MXJob.")


class XGBoostJob(KubeflowJob):
    """An XGBoostJob: distributed XGBoost (Master, Worker)."""

    kind: Literal["XGBoostJob"] = Field(description="XGBoostJob.")
    spec: XGBoostJobSpec | None = Field(None, description="The desired state of the XGBoostJob.")


class JAXJob(KubeflowJob):
    """A JAXJob: distributed JAX (Worker)."""

    kind: Literal["JAXJob"] = Field(description="JAXJob.")
    spec: JAXJobSpec | None = Field(None, description="The desired state of the JAXJob.")


class PaddleJob(KubeflowJob):
    """A PaddleJob: distributed PaddlePaddle (Master, Worker), elastic."""

    kind: Literal["PaddleJob"] = Field(description="PaddleJob.")
    spec: PaddleJobSpec | None = Field(None, description="The desired state of the PaddleJob.")


JOBS: dict[str, type[KubeflowJob]] = {
    cls.__name__: cls for cls in (TFJob, PyTorchJob, MXJob, XGBoostJob, JAXJob, PaddleJob)
}
"""Kind -> its model."""


def parse(body: Any) -> KubeflowJob:
    """``body`` (a dict with ``kind``) as its kind's model; ``KeyError`` for another kind, pydantic's
    ``ValidationError`` for a body that does not fit."""
    kind = body.get("kind") if isinstance(body, dict) else None
    return JOBS[str(kind)].model_validate(body)


def unknown_fields(model: BaseModel, path: str = "") -> Iterator[str]:
    """The dotted paths (mljob's style: ``spec.runPolicy.backofLimit``) of fields no model here knows.

    The API server prunes them from a Kubeflow object (and ``kubectl --validate=strict`` refuses them); pod
    templates are plain dicts and not walked: their unknown fields are :mod:`mljob.core.schema`'s to report.
    """
    for name in sorted(model.model_extra or {}):
        yield f"{path}.{name}" if path else name
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        child = f"{path}.{info.alias or name}" if path else (info.alias or name)
        yield from _unknown_in(value, child)


def _unknown_in(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from unknown_fields(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield from unknown_fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield from unknown_fields(item, f"{path}[{i}]")
