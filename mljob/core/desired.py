"""What a job should consist of: its rendered children and placement objects, or why it can have none.

:func:`desire` checks and renders a job once per spec generation (the costly part of a pass; the controller
keeps the result); :func:`reject` is the plan for a body that does not even parse as an MLJob. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mljob.api import ConditionType, GangScheduler, MLJob, MLJobStatus, Phase
from mljob.core import kueue as queueing
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.names import QUEUE_LABEL
from mljob.core.placement import NOT_SERVED, gang_scheduler
from mljob.core.plan import Event, Plan
from mljob.core.progress import Endpoint
from mljob.core.render import JOB_OBJECT_KINDS, elastic_of, owner_reference, render
from mljob.core.status import derive_phase, set_condition, spec_hash, status_patch, terminal
from mljob.core.validation import DEFAULT_LIMITS, INVALID_SPEC, PLUGIN_ERROR, Limits, check_job
from mljob.framework import Elastic, Framework, Problem
from mljob.plugins import PluginError, Plugins


@dataclass(frozen=True)
class Desired:
    """What the job should consist of: the rendered children, or why there are none."""

    framework: Framework | None
    pods: tuple[dict[str, Any], ...] = ()
    services: tuple[dict[str, Any], ...] = ()
    """The job's one headless service (MLJob), or a service per replica (Kubeflow's kinds)."""
    placement: tuple[dict[str, Any], ...] = ()
    """What the job's gang scheduler reads (a PodGroup, ...): created, idempotently, before any pod."""
    backend: GangScheduler = GangScheduler.NONE
    queued: dict[str, Any] | None = None
    """The Kueue Workload of a job labelled with a queue: created first; no pod until it is admitted."""
    problems: tuple[Problem, ...] = ()
    reason: str = INVALID_SPEC
    spec_hash: str = ""
    unknown_framework: bool = False
    kind: JobKind = MLJOB
    """The API kind the job came as (its children's labels and owner are that kind's)."""
    objects: tuple[dict[str, Any], ...] = ()
    """The framework's per-job ConfigMaps and Secrets (:meth:`Framework.objects`): created before any pod."""
    elastic: Elastic | None = None
    """The role that may grow and shrink while the job runs, and its bounds (:meth:`Framework.elastic`)."""

    @property
    def service(self) -> dict[str, Any] | None:
        """The job's one service (an MLJob's); the first of a Kubeflow kind's."""
        return self.services[0] if self.services else None

    @property
    def ok(self) -> bool:
        return self.framework is not None and not self.problems


@dataclass(frozen=True)
class Placement:
    """The operator's placement setup: its default gang scheduler, and which backends the cluster serves."""

    default: GangScheduler = GangScheduler.NONE
    unavailable: frozenset[GangScheduler] = frozenset()
    kueue: bool = True
    """Whether the cluster serves Kueue's Workload (jobs labelled with a queue need it)."""


def placement_problems(job: MLJob, placement: Placement, kind: JobKind = MLJOB) -> list[Problem]:
    """What the job asks of placement that this cluster does not serve (a gang scheduler's API, Kueue).

    A queue label on a kind whose Workload Kueue's own integration makes needs nothing of mljob.
    """
    problems = []
    backend = gang_scheduler(job, placement.default)
    if backend in placement.unavailable:
        policy = job.spec.run_policy.scheduling_policy
        chosen = (
            "" if policy is not None and policy.gang_scheduler is not None else " (the operator's --gang-scheduler)"
        )
        problems.append(Problem("spec.runPolicy.schedulingPolicy.gangScheduler", NOT_SERVED[backend] + chosen))
    if kind.owns_workload and queueing.queue_name(job) is not None and not placement.kueue:
        problems.append(Problem(f"metadata.labels.{QUEUE_LABEL}", queueing.NOT_SERVED))
    return problems


def desire(
    job: MLJob,
    plugins: Plugins,
    placement: Placement | None = None,
    limits: Limits = DEFAULT_LIMITS,
    kind: JobKind = MLJOB,
    endpoint: Endpoint | None = None,
) -> Desired:
    """Check and render ``job``; a plugin that raises becomes a ``PluginError`` for this job only.

    ``endpoint`` is where the pods report progress, when the operator serves it.
    ``kind`` is the API kind the job came as: its children are that kind's, and the problems name that kind's
    fields (``spec.pytorchReplicaSpecs.Worker...`` for a PyTorchJob).
    """
    placement = placement or Placement()
    checked = check_job(job, plugins, limits, gang_may_wait=kind.gang_may_wait)
    framework = checked.framework
    problems = list(checked.problems)
    backend = gang_scheduler(job, placement.default)
    problems += placement_problems(job, placement, kind)
    if framework is None or problems:
        return Desired(
            framework,
            problems=tuple(Problem(kind.path_of(p.path), p.message) for p in problems),
            reason=checked.reason,
            unknown_framework=framework is None,
            kind=kind,
        )
    try:
        elastic = elastic_of(job, framework)
        children = render(
            job, framework, plugins, uid=job.metadata.uid, gang=placement.default, kind=kind, endpoint=endpoint
        )
    except PluginError as error:
        return Desired(framework, problems=(Problem("", str(error)),), reason=PLUGIN_ERROR, kind=kind)
    except Exception as error:  # the framework's own env(): any exception is the plugin's
        wrapped = PluginError(framework.name, "env", error)
        return Desired(framework, problems=(Problem("", str(wrapped)),), reason=PLUGIN_ERROR, kind=kind)
    pods = tuple(c for c in children if c["kind"] == "Pod")
    services = tuple(c for c in children if c["kind"] == "Service")
    objects = tuple(c for c in children if c["kind"] in JOB_OBJECT_KINDS)
    grouped = tuple(c for c in children if c["kind"] not in ("Pod", "Service", *JOB_OBJECT_KINDS))
    queued = None
    if kind.owns_workload and queueing.queue_name(job) is not None and queueing.prebuilt_workload(job) is None:
        queued = queueing.workload(job, owner_reference(job, job.metadata.uid, kind))
    fingerprint = spec_hash(job, elastic)
    return Desired(
        framework,
        pods,
        services,
        grouped,
        backend,
        queued,
        spec_hash=fingerprint,
        kind=kind,
        objects=objects,
        elastic=elastic,
    )


def reject(body: Mapping[str, Any], problems: Sequence[Problem], now: datetime) -> Plan:
    """The plan for a body that does not even parse as an MLJob: Failed, InvalidSpec, with the paths.

    The CRD schema stops most such bodies; this covers what it cannot express (and clusters
    whose CRD is older than the operator). Nothing else is touched: without a spec there is no
    cleanPodPolicy to apply, and the children still go with the job when it is deleted.
    """
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Plan()
    try:
        old: MLJobStatus | None = MLJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        old = None
    if old is not None and terminal(old):
        return Plan()
    message = "; ".join(str(p) for p in problems)
    base = old or MLJobStatus()
    conditions = set_condition(list(base.conditions), ConditionType.FAILED, True, INVALID_SPEC, message, now)
    generation = meta.get("generation")
    new = base.model_copy(
        update={
            "phase": derive_phase(conditions),
            "conditions": conditions,
            "completion_time": now,
            "message": message,
            "observed_generation": generation if isinstance(generation, int) else None,
        }
    )
    return Plan(
        status=status_patch(old if body.get("status") else None, new),
        events=(Event("Warning", INVALID_SPEC, message, closing=True),),
        finished=Phase.FAILED,
    )
