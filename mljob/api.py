"""The MLJob API (``mljob.io/v1alpha1``) as pydantic models.

These models are the one source of truth: the CRD in ``crds/`` is generated from them
(``mljob crd``), the CLI validates files with them and the operator parses every event body
with them. Field names are camelCase on the wire (aliases) and snake_case in Python.

Pod templates stay plain dicts here: they are checked against the real Kubernetes OpenAPI
schema in :mod:`mljob.core.schema`, which reports every problem with its path, something a
hand-written pydantic copy of ``PodTemplateSpec`` would do worse and drift from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt
from pydantic.alias_generators import to_camel

GROUP = "mljob.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MLJob"
PLURAL = "mljobs"


def format_time(value: datetime) -> str:
    """RFC 3339 with a ``Z``, second precision: what Kubernetes itself writes."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """A Kubernetes timestamp (``2026-01-01T00:00:00Z``) as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


Time = Annotated[datetime, PlainSerializer(format_time, return_type=str, when_used="json")]
"""A timestamp that serialises the way the API server writes them."""

NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class Model(BaseModel):
    """Base for every API model: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_enum_values=False,
    )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RestartPolicy(StrEnum):
    """What happens when a replica's container exits."""

    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"
    EXIT_CODE = "ExitCode"


class CleanPodPolicy(StrEnum):
    """Which pods are deleted once the job reaches a terminal phase."""

    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class Phase(StrEnum):
    """The one phase a person reads; derived from the conditions, never set on its own."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class OwnerReference(Model):
    """A Kubernetes ownerReference (metadata of the MLJob as read from the server)."""

    api_version: str = Field(description="API version of the owner.")
    kind: str = Field(description="Kind of the owner.")
    name: str = Field(description="Name of the owner.")
    uid: str = Field(description="UID of the owner.")
    controller: bool | None = Field(None, description="Whether the owner is the managing controller.")
    block_owner_deletion: bool | None = Field(None, description="Foreground deletion waits for this object.")


class ObjectMeta(Model):
    """The subset of Kubernetes ObjectMeta an MLJob carries; unknown keys are an error."""

    name: str = Field(description="Name of the job; a DNS-1035 label (becomes the service name).")
    namespace: str = Field("default", description="Namespace of the job.")
    generate_name: str | None = Field(None, description="Not supported for MLJob; names must be stable.")
    uid: str | None = Field(None, description="Set by the API server.")
    resource_version: str | None = Field(None, description="Set by the API server.")
    generation: int | None = Field(None, description="Set by the API server.")
    creation_timestamp: str | None = Field(None, description="Set by the API server.")
    deletion_timestamp: str | None = Field(None, description="Set by the API server.")
    deletion_grace_period_seconds: int | None = Field(None, description="Set by the API server.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the job.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the job.")
    owner_references: list[OwnerReference] = Field(default_factory=list, description="Owners of the job.")
    finalizers: list[str] = Field(default_factory=list, description="Finalizers of the job.")
    managed_fields: list[dict[str, Any]] | None = Field(None, description="Set by the API server.")
    self_link: str | None = Field(None, description="Deprecated; set by old API servers.")


class ReplicaSpec(Model):
    """One role of the job: how many replicas, how they restart, and their pod template."""

    replicas: NonNegativeInt = Field(1, description="Number of replicas of this role.")
    restart_policy: RestartPolicy | None = Field(
        None,
        description=(
            "Always | OnFailure | Never | ExitCode. ExitCode fails the job on exit codes 1-127 and "
            "recreates the pod on 128+ (killed by a signal) or eviction. Default: the framework's."
        ),
    )
    template: dict[str, Any] = Field(
        description="A Kubernetes PodTemplateSpec, checked against the Kubernetes OpenAPI schema."
    )


class GangScheduler(StrEnum):
    """Which scheduler places a job's pods all or nothing (see docs/placement.md)."""

    KUBERNETES = "kubernetes"
    """kube-scheduler's own gang scheduling: a scheduling.k8s.io/v1beta1 Workload and PodGroup (1.37+)."""
    COSCHEDULING = "coscheduling"
    """scheduler-plugins' coscheduling: a scheduling.x-k8s.io/v1alpha1 PodGroup, its label and scheduler name."""
    VOLCANO = "volcano"
    """Volcano: a scheduling.volcano.sh/v1beta1 PodGroup; pods are created once it leaves Pending."""
    NONE = "none"
    """No gang: each pod is scheduled on its own."""


class TopologyMode(StrEnum):
    """How strictly a job's pods are kept in one topology domain."""

    REQUIRED = "required"
    PREFERRED = "preferred"


class Topology(Model):
    """Keep every pod of the job in one domain of a node label: one zone, or one node."""

    key: str = Field(description="A node label, e.g. topology.kubernetes.io/zone or kubernetes.io/hostname.")
    mode: TopologyMode = Field(TopologyMode.REQUIRED, description="required: never split; preferred: try to.")


class SchedulingPolicy(Model):
    """Hints for gang schedulers and queues (Volcano, Kueue, scheduler-plugins)."""

    gang_scheduler: GangScheduler | None = Field(
        None, description="The gang scheduler for this job; default: the operator's --gang-scheduler."
    )
    topology: Topology | None = Field(None, description="Keep the job's pods in one topology domain.")
    min_available: PositiveInt | None = Field(None, description="Replicas that must be schedulable at once.")
    queue: str | None = Field(None, description="Queue name for a batch scheduler.")
    priority_class: str | None = Field(None, description="PriorityClass for the job's pods.")
    min_resources: dict[str, int | str] | None = Field(
        None,
        description=(
            "Resources the gang needs before any pod starts (a ResourceList); default: the requests of the "
            "first minAvailable replicas. Read by coscheduling and Volcano."
        ),
    )
    schedule_timeout_seconds: PositiveInt | None = Field(
        None,
        description=(
            "Seconds the job's pods may wait to be scheduled, from their creation, before the job fails with "
            "ScheduleTimeout; coscheduling is given the same timeout."
        ),
    )


class RunPolicy(Model):
    """Job-level policies, applied the same way in the cluster and in a local run."""

    backoff_limit: NonNegativeInt = Field(
        6, description="Restarts of any kind, counted across the whole job, before it fails."
    )
    active_deadline_seconds: PositiveInt | None = Field(
        None, description="Seconds from startTime after which the job fails with DeadlineExceeded."
    )
    ttl_seconds_after_finished: NonNegativeInt | None = Field(
        None, description="Seconds after completion after which the MLJob is deleted."
    )
    clean_pod_policy: CleanPodPolicy = Field(
        CleanPodPolicy.RUNNING,
        description="All | Running | None: which pods to delete when the job finishes, on every path.",
    )
    suspend: bool = Field(False, description="Suspend the job: delete its pods until resumed (Kueue).")
    scheduling_policy: SchedulingPolicy | None = Field(None, description="Gang scheduling hints.")


MLJOB_CONTROLLER = "mljob.io/operator"
"""``spec.managedBy`` for a job this operator runs (also when unset)."""
MULTIKUEUE_CONTROLLER = "kueue.x-k8s.io/multikueue"
"""``spec.managedBy`` for a job Kueue's MultiKueue dispatches to a worker cluster: on this (the manager) cluster the
operator only queues it (its Kueue Workload); a copy runs on the worker and Kueue copies its status back."""
MANAGED_BY_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-A-Za-z0-9_.~/]+$"
"""A domain-prefixed path, as Kubernetes' ``Job.spec.managedBy``: ``example.com/my-controller``."""


class MLJobSpec(Model):
    """What the user asks for."""

    framework: str = Field(min_length=1, description="Name of an installed framework plugin.")
    replica_specs: dict[str, ReplicaSpec] = Field(
        min_length=1, description="Role name (one of the framework's roles) -> replica spec."
    )
    framework_options: dict[str, Any] = Field(
        default_factory=dict, description="Options validated by the framework plugin's own model."
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Job-level run policy.")
    managed_by: str | None = Field(
        None,
        max_length=63,
        pattern=MANAGED_BY_PATTERN,
        description=(
            "The controller that runs the job: mljob.io/operator (also when unset); kueue.x-k8s.io/multikueue "
            "(Kueue's MultiKueue runs it on a worker cluster, this operator only queues it here); any other "
            "controller's name leaves the job alone. Immutable."
        ),
    )


class Condition(Model):
    """A Kubernetes-style condition; only one of Running/Restarting/Succeeded/Failed is True."""

    type: ConditionType = Field(description="Created | Running | Restarting | Succeeded | Failed | Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason, e.g. BackoffLimitExceeded.")
    message: str = Field("", description="What happened, for a person.")
    last_transition_time: Time | None = Field(None, description="When the status last changed.")


class ReplicaStatus(Model):
    """Counts for one role."""

    active: NonNegativeInt = Field(0, description="Replicas pending or running.")
    succeeded: NonNegativeInt = Field(0, description="Replicas that exited 0.")
    failed: NonNegativeInt = Field(0, description="Replicas that failed.")
    restarts: NonNegativeInt = Field(0, description="Restarts of this role's replicas, in place or by recreation.")


class Metric(Model):
    """One named metric's latest value, a string as Kubeflow Trainer writes it (``loss``: ``0.0421``)."""

    name: str = Field(min_length=1, max_length=64, description="The metric's name, e.g. loss, eval_accuracy.")
    value: str = Field(min_length=1, max_length=64, description="Its latest value, as a string.")


class TrainerStatus(Model):
    """The latest progress report, in Kubeflow Trainer's ``TrainJobStatus`` shape (``status.trainerStatus``), plus
    mljob's ``step`` and ``totalSteps``. Written by the operator's progress endpoint (docs/progress.md)."""

    progress_percentage: int | None = Field(None, ge=0, le=100, description="How complete the job is, 0-100.")
    estimated_remaining_seconds: int | None = Field(None, ge=0, description="Seconds of training left, estimated.")
    metrics: list[Metric] = Field(default_factory=list, max_length=256, description="Latest value of each metric.")
    last_updated_time: Time | None = Field(None, description="When the latest report was made.")
    step: int | None = Field(None, ge=0, description="The latest step reported (mljob).")
    total_steps: int | None = Field(None, ge=1, description="The steps the job trains for, as reported (mljob).")


class MetricCurve(Model):
    """A numeric metric's values over the job's life, thinned to at most 128 points (the UI's curve)."""

    name: str = Field(min_length=1, max_length=64, description="The metric's name.")
    x: list[Annotated[int, Field(description="A point's step.")]] = Field(
        default_factory=list, max_length=256, description="The step of each point (the report's count if no step)."
    )
    y: list[Annotated[float, Field(description="A point's value.")]] = Field(
        default_factory=list, max_length=256, description="The metric's value at each point."
    )


class ElasticStatus(Model):
    """An elastic job's membership as the operator sees it: the elastic role's replicas running now (torchrun's
    agents re-form the group around them), within the bounds."""

    running: NonNegativeInt = Field(0, description="Replicas of the elastic role running now.")
    min_replicas: NonNegativeInt = Field(0, description="The fewest the job trains with (elasticPolicy).")
    max_replicas: NonNegativeInt = Field(0, description="The most the job may be scaled to (elasticPolicy).")


class MLJobStatus(Model):
    """What the operator observed; the phase is derived from the conditions."""

    phase: Phase = Field(Phase.PENDING, description="Pending | Running | Restarting | Succeeded | Failed | Suspended.")
    conditions: list[Condition] = Field(default_factory=list, description="Condition history, one per type.")
    replica_statuses: dict[str, ReplicaStatus] = Field(default_factory=dict, description="Counts per role.")
    restart_count: NonNegativeInt = Field(0, description="Restarts counted against backoffLimit.")
    start_time: Time | None = Field(None, description="When the job's pods were first created (reset on resume).")
    completion_time: Time | None = Field(None, description="When the job reached Succeeded or Failed.")
    observed_generation: int | None = Field(None, description="The spec generation this status reflects.")
    message: str = Field("", description="The latest thing a person should know, naming replica and cause.")
    trainer_status: TrainerStatus | None = Field(None, description="The training's latest progress report.")
    progress: str | None = Field(None, description="Progress for a person: 42% (or step 420 with no total known).")
    eta: str | None = Field(None, description="Estimated time left for a person: 3m10s.")
    metric_history: list[MetricCurve] | None = Field(
        None, max_length=8, description="Numeric metrics over time, for the UI."
    )
    elastic: ElasticStatus | None = Field(None, description="An elastic job's current membership.")
    selector: str | None = Field(
        None,
        description=(
            "The label selector of an elastic job's elastic role's pods: the scale subresource's, which a "
            "HorizontalPodAutoscaler reads."
        ),
    )


class MLJob(Model):
    """An MLJob: a framework name, its replicas per role, and the run policy."""

    api_version: Literal["mljob.io/v1alpha1"] = Field(description="Always mljob.io/v1alpha1.")
    kind: Literal["MLJob"] = Field(description="Always MLJob.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: MLJobSpec = Field(description="The job's desired state.")
    status: MLJobStatus | None = Field(None, description="Observed state, written by the operator.")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace
