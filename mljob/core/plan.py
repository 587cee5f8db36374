"""What one reconcile pass wants done (:class:`Plan`), and the :class:`Draft` a pass builds it in.

The planner's steps (:mod:`mljob.core.reconcile`, :mod:`mljob.core.kueue`) each add to one draft: the
children to create and delete, the conditions, events and status patches. :meth:`Draft.plan` freezes
it. Pure: no I/O, no clock; ``now`` comes in with the job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from mljob.api import ConditionType, MLJob, MLJobStatus, Phase, ReplicaStatus, TrainerStatus
from mljob.core import children as podlib
from mljob.core import progress
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.status import LEDGER_ANNOTATION, Ledger, derive_phase, set_condition, status_patch

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Delete:
    """Delete one child; ``uid`` is a precondition, so a newer object of the same name is never hit."""

    kind: str
    name: str
    uid: str
    why: str
    api_version: str = "v1"
    """Pods and the service; a gang's objects (PodGroup, Workload) when the job is done with them."""


@dataclass(frozen=True)
class StatusPatch:
    """A merge patch of another object's ``/status`` (the job's Kueue Workload), with its resourceVersion."""

    api_version: str
    kind: str
    name: str
    resource_version: str
    status: dict[str, Any]
    why: str


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str
    closing: bool = False
    """The job's terminal event (Succeeded, Failed's reasons): the operator posts it after the pass's deletes,
    naming what they removed, so a job's end and its cleanup are one event (one request), not two."""


@dataclass(frozen=True)
class Plan:
    """What one reconcile pass wants done, in the order the operator applies it.

    The ledger annotation (only when a restart was counted) first, then the status (both with the
    job's resourceVersion as a precondition, so a pass that read a stale job changes nothing),
    then :attr:`events`, then deletes and creates, then the job's own deletion (TTL). Counting
    before acting means a crash in between never counts a restart twice: the next pass finds the
    restart already recorded.
    """

    creates: tuple[dict[str, Any], ...] = ()
    deletes: tuple[Delete, ...] = ()
    status: dict[str, Any] | None = None
    """JSON merge patch for ``/status``; None when nothing changed."""
    annotations: dict[str, str] | None = None
    """Merge patch for ``metadata.annotations`` (the restart ledger); None when unchanged."""
    events: tuple[Event, ...] = ()
    wake_at: datetime | None = None
    """Reconcile again at this time even if nothing changes (deadline, TTL)."""
    delete_job: bool = False
    """The job finished longer than ``ttlSecondsAfterFinished`` ago."""
    restarts: int = 0
    """Restarts counted in this pass (for metrics)."""
    finished: Phase | None = None
    """Succeeded or Failed when the job finished in this pass (for metrics)."""
    patches: tuple[StatusPatch, ...] = ()
    """Status the job reports on objects it owns but does not create pods from (Kueue's Workload)."""
    updates: tuple[dict[str, Any], ...] = ()
    """Objects the job owns whose spec follows the job's (a gang's PodGroup after ``minAvailable`` changed):
    their ``spec`` is merge-patched as rendered; one that does not exist yet is left to be created."""
    accepted: bool = False
    """The job's Created condition turned True in this pass (for metrics: once per job)."""
    running_after: float | None = None
    """Seconds from the job's creation to the first time every replica ran, set in that pass only."""

    @property
    def empty(self) -> bool:
        return not (
            self.creates
            or self.deletes
            or self.status
            or self.annotations
            or self.events
            or self.delete_job
            or self.patches
            or self.updates
        )


def owned(objects: Sequence[Mapping[str, Any]], owner: str) -> list[Mapping[str, Any]]:
    """The objects whose controller is the job with uid ``owner``: no other child is ever counted or touched."""
    return [o for o in objects if owner and podlib.controller_uid(o, None) == owner]


class Draft:
    """A plan being built: the job's status and ledger as they were, and what the pass has added so far."""

    def __init__(
        self,
        job: MLJob,
        now: datetime,
        pods: Sequence[Mapping[str, Any]] = (),
        services: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        placed: Mapping[str, Mapping[str, Any]] | None = None,
        kind: JobKind = MLJOB,
    ) -> None:
        self.job, self.now, self.kind = job, now, kind
        self.old = job.status or MLJobStatus()
        uid = job.metadata.uid or ""
        self.pods = {podlib.name(p): p for p in owned(pods, uid)}
        if services is None:
            services = ()
        elif isinstance(services, Mapping):
            services = (services,)
        self.services = {podlib.name(s): s for s in owned(services, uid)}
        self.placed = {kind: obj for kind, obj in (placed or {}).items() if owned([obj], uid)}
        self.ledger = Ledger.read(job)
        self.conditions = list(self.old.conditions)
        self.replica_statuses = dict(self.old.replica_statuses)
        self.message = self.old.message
        self.start_time = self.old.start_time
        self.completion_time = self.old.completion_time
        self.creates: list[dict[str, Any]] = []
        self.deletes: dict[str, Delete] = {}
        self.events: list[Event] = []
        self.patches: list[StatusPatch] = []
        self.updates: list[dict[str, Any]] = []
        self.wake: list[datetime] = []
        self.delete_job = False
        self.counted = 0
        self.finished: Phase | None = None
        self.accepted = False
        self.running_after: float | None = None
        self.elastic = self.old.elastic
        self.selector = self.old.selector

    def event(self, type: EventType, reason: str, message: str, closing: bool = False) -> None:
        self.events.append(Event(type, reason, message, closing))

    def condition(self, kind: ConditionType, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(self.conditions, kind, value, reason, message, self.now)

    def is_true(self, kind: ConditionType) -> bool:
        """Whether ``kind`` is True in the conditions as this pass leaves them."""
        return any(c.type == kind and c.status == "True" for c in self.conditions)

    def delete(self, obj: Mapping[str, Any], why: str, kind: Literal["Pod", "Service"] = "Pod") -> None:
        if not podlib.terminating(obj):
            name = podlib.name(obj)
            self.deletes.setdefault(f"{kind}/{name}", Delete(kind, name, podlib.uid(obj), why))

    def patch_status(
        self, api_version: str, kind: str, obj: Mapping[str, Any], status: dict[str, Any], why: str
    ) -> None:
        """A status merge patch of an object the job owns (its Kueue Workload), at the version the pass read."""
        meta = obj.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "")
        self.patches.append(StatusPatch(api_version, kind, str(meta.get("name")), rv, status, why))

    def count_replicas(self, stopped_as_succeeded: set[str] | None = None) -> dict[str, ReplicaStatus]:
        """Counts per role from the pods that stay; pods this pass deletes are no longer active."""
        deleting = {d.name for d in self.deletes.values() if d.kind == "Pod"}
        stopped = stopped_as_succeeded or set()
        result: dict[str, ReplicaStatus] = {}
        for role in self.job.spec.replica_specs:
            active = succeeded = failed = 0
            for name, pod in self.pods.items():
                which = podlib.replica_of(pod, self.kind)
                if which is None or which[0] != role.lower():
                    continue
                phase = podlib.phase(pod)
                if name in stopped or phase == podlib.SUCCEEDED:
                    succeeded += 1
                elif phase == podlib.FAILED and not podlib.terminating(pod):
                    failed += 1
                elif not podlib.terminating(pod) and name not in deleting and phase != podlib.FAILED:
                    active += 1
            result[role] = ReplicaStatus(
                active=active, succeeded=succeeded, failed=failed, restarts=self.ledger.restarts.get(role, 0)
            )
        return result

    def _progress(self, phase: Phase) -> dict[str, Any]:
        """The progress the job reported (:mod:`mljob.core.progress`), carried over: the endpoint writes it, the
        pass keeps it. A finished job's is ended: 100% with nothing left on success, no ETA on failure."""
        old = self.job.status
        if old is None or old.trainer_status is None:
            return {}
        before = old.to_dict()
        fields = {"trainerStatus": before.get("trainerStatus"), "progress": old.progress, "eta": old.eta}
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            fields.update(progress.finished(before, phase == Phase.SUCCEEDED) or {})
        return {
            "trainer_status": TrainerStatus.model_validate(fields["trainerStatus"]),
            "progress": fields["progress"],
            "eta": fields["eta"],
            "metric_history": old.metric_history,
        }

    def plan(self) -> Plan:
        """The frozen plan: the status patch is the difference from the status the pass read."""
        phase = derive_phase(self.conditions)
        new = MLJobStatus(
            phase=phase,
            conditions=self.conditions,
            replica_statuses=self.replica_statuses,
            restart_count=self.ledger.total,
            start_time=self.start_time,
            completion_time=self.completion_time,
            observed_generation=self.job.metadata.generation,
            message=self.message,
            **self._progress(phase),
            elastic=self.elastic,
            selector=self.selector,
        )
        annotations = None
        if self.ledger.changed:
            live = [podlib.uid(p) for p in self.pods.values()]
            annotations = {LEDGER_ANNOTATION: self.ledger.dump(live)}
        return Plan(
            creates=tuple(self.creates),
            deletes=tuple(self.deletes.values()),
            status=status_patch(self.job.status, new),
            annotations=annotations,
            events=tuple(self.events),
            wake_at=min(self.wake) if self.wake else None,
            delete_job=self.delete_job,
            restarts=self.counted,
            finished=self.finished,
            patches=tuple(self.patches),
            updates=tuple(self.updates),
            accepted=self.accepted,
            running_after=self.running_after,
        )
