"""The reconciler's pure core: (job, what it should be, observed children, now) -> a frozen plan.

No I/O and no clock: the operator feeds it watch-stream state and ``now`` and applies the
:class:`Plan`; tests feed it builders. Every decision about restarts, the run policy and the
status is made here, so it is made the same way whatever woke the job.

Choices (see also :mod:`mljob.status` for the restart ledger):

* **Children are exactly what** :func:`mljob.render.render` **prints.** Names are deterministic, so
  a create is idempotent; a pod still terminating keeps its name taken and is waited for.
  A child counts only with a controller ownerReference to this job's uid, whatever its labels.
* **Restarts.** ``Always``/``OnFailure`` restart in place (container ``restartCount`` increases are
  counted); a pod that fails as a whole under them (evicted, node lost) is recreated. ``ExitCode``
  recreates on exit codes 128+ and pod-level failures and fails the job on 1-127. ``Never`` fails
  the job. Every restart counts against ``backoffLimit``; a recreation that would exceed it fails
  the job instead. A pod someone else deletes is recreated without counting: it did not fail.
* **Terminal paths** (success, replica failure, backoff, deadline, invalid spec) all apply
  ``cleanPodPolicy``. Roles that run until stopped (TF PS, MXNet scheduler/server) are stopped on
  every terminal path, even under ``None``: they never exit on their own, and a finished job must
  not hold their resources forever; ``None`` keeps every pod that finishes by itself.
* **replicaSpecs change while running** (the CRD's CEL rule forbids it; this is the fallback when
  the rule is absent or bypassed): the change is not applied. Running pods keep the spec they
  started with (Kueue only edits suspended jobs, Kubeflow never rolls pods); if a pod must be
  created or removed before the job finishes, the job fails with ``SpecChanged`` rather than
  mixing two specs in one job. Suspend, edit, resume applies a change. Which spec the job started
  with is read from its pods' ``mljob.io/spec-hash`` label, or from the ledger once a restart has
  written it; with neither (every pod gone at once, none counted), nothing of an older spec runs
  and the pods are created from the spec as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from mljob import pods as podlib
from mljob import queueing
from mljob.api import (
    ConditionType,
    GangScheduler,
    MLJob,
    MLJobStatus,
    Phase,
    ReplicaStatus,
    RestartPolicy,
    format_time,
    parse_time,
)
from mljob.framework import Framework, Outcome, Problem, Replica, replicas_of
from mljob.names import QUEUE_LABEL
from mljob.placement import NOT_SERVED, gang_scheduler, waits_for
from mljob.plugins import PluginError, Plugins
from mljob.render import owner_reference, render, restart_policy
from mljob.status import (
    LEDGER_ANNOTATION,
    Ledger,
    PodRecord,
    clear_condition,
    derive_phase,
    is_true,
    set_condition,
    spec_hash,
    status_patch,
    terminal,
)
from mljob.validation import DEFAULT_LIMITS, INVALID_SPEC, PLUGIN_ERROR, Limits, check_job

EventType = Literal["Normal", "Warning"]
QUEUED = "Queued"
"""The Suspended reason of a job that waits for Kueue to admit it."""


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
        )


@dataclass(frozen=True)
class Desired:
    """What the job should consist of: the rendered children, or why there are none."""

    framework: Framework | None
    pods: tuple[dict[str, Any], ...] = ()
    service: dict[str, Any] | None = None
    placement: tuple[dict[str, Any], ...] = ()
    """What the job's gang scheduler reads (a PodGroup, ...): created, idempotently, before any pod."""
    backend: GangScheduler = GangScheduler.NONE
    queued: dict[str, Any] | None = None
    """The Kueue Workload of a job labelled with a queue: created first; no pod until it is admitted."""
    problems: tuple[Problem, ...] = ()
    reason: str = INVALID_SPEC
    spec_hash: str = ""
    unknown_framework: bool = False

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


def placement_problems(job: MLJob, placement: Placement) -> list[Problem]:
    """What the job asks of placement that this cluster does not serve (a gang scheduler's API, Kueue)."""
    problems = []
    backend = gang_scheduler(job, placement.default)
    if backend in placement.unavailable:
        policy = job.spec.run_policy.scheduling_policy
        chosen = (
            "" if policy is not None and policy.gang_scheduler is not None else " (the operator's --gang-scheduler)"
        )
        problems.append(Problem("spec.runPolicy.schedulingPolicy.gangScheduler", NOT_SERVED[backend] + chosen))
    if queueing.queue_name(job) is not None and not placement.kueue:
        problems.append(Problem(f"metadata.labels.{QUEUE_LABEL}", queueing.NOT_SERVED))
    return problems


def desire(
    job: MLJob, plugins: Plugins, placement: Placement | None = None, limits: Limits = DEFAULT_LIMITS
) -> Desired:
    """Check and render ``job``; a plugin that raises becomes a ``PluginError`` for this job only."""
    placement = placement or Placement()
    checked = check_job(job, plugins, limits)
    framework = checked.framework
    problems = list(checked.problems)
    backend = gang_scheduler(job, placement.default)
    problems += placement_problems(job, placement)
    if framework is None or problems:
        return Desired(
            framework,
            problems=tuple(problems),
            reason=checked.reason,
            unknown_framework=framework is None,
        )
    try:
        children = render(job, framework, plugins, uid=job.metadata.uid, gang=placement.default)
    except PluginError as error:
        return Desired(framework, problems=(Problem("", str(error)),), reason=PLUGIN_ERROR)
    except Exception as error:  # the framework's own env(): any exception is the plugin's
        wrapped = PluginError(framework.name, "env", error)
        return Desired(framework, problems=(Problem("", str(wrapped)),), reason=PLUGIN_ERROR)
    pods = tuple(c for c in children if c["kind"] == "Pod")
    (service,) = (c for c in children if c["kind"] == "Service")
    grouped = tuple(c for c in children if c["kind"] not in ("Pod", "Service"))
    queued = None
    if queueing.queue_name(job) is not None:
        queued = queueing.workload(job, owner_reference(job, job.metadata.uid))
    return Desired(framework, pods, service, grouped, backend, queued, spec_hash=spec_hash(job))


@dataclass
class _Retry:
    replica: Replica
    pod: Mapping[str, Any]
    record: PodRecord
    why: str


@dataclass
class _Observed:
    """Phase A of a running pass: outcomes and what happened, before anything is decided."""

    outcomes: dict[Replica, Outcome] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    retries: list[_Retry] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[Mapping[str, Any]] = field(default_factory=list)
    waiting: str = ""


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


def plan(
    job: MLJob,
    desired: Desired,
    pods: Sequence[Mapping[str, Any]],
    service: Mapping[str, Any] | None,
    now: datetime,
    placed: Mapping[str, Mapping[str, Any]] | None = None,
    flavors: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """One reconcile pass for ``job``, given every pod and the service the watch stream has seen for it.

    ``placed`` holds the job's objects that a scheduler or queue writes status on, by kind: its Kueue
    ``Workload`` and its Volcano ``PodGroup``; ``flavors`` the ResourceFlavors its admission names.
    """
    return _Pass(job, desired, pods, service, now, placed or {}, flavors or {}).run()


class _Pass:
    """The state of one pass: starts from the job's status and ledger, accumulates the plan."""

    def __init__(
        self,
        job: MLJob,
        desired: Desired,
        pods: Sequence[Mapping[str, Any]],
        service: Mapping[str, Any] | None,
        now: datetime,
        placed: Mapping[str, Mapping[str, Any]] | None = None,
        flavors: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.job, self.desired, self.now = job, desired, now
        owner_uid = job.metadata.uid or ""
        self.placed = {
            kind: obj for kind, obj in (placed or {}).items() if owner_uid and podlib.controller_uid(obj) == owner_uid
        }
        self.flavors = flavors or {}
        self.queue = queueing.queue_name(job)
        self.patches: list[StatusPatch] = []
        self.policy = job.spec.run_policy
        self.old = job.status
        old = job.status or MLJobStatus()
        owner = job.metadata.uid or ""
        self.pods = {podlib.name(p): p for p in pods if owner and podlib.controller_uid(p) == owner}
        self.service = service if service is not None and owner and podlib.controller_uid(service) == owner else None
        self.ledger = Ledger.read(job)
        self.conditions = list(old.conditions)
        self.replica_statuses = dict(old.replica_statuses)
        self.message = old.message
        self.start_time = old.start_time
        self.completion_time = old.completion_time
        self.creates: list[dict[str, Any]] = []
        self.deletes: dict[str, Delete] = {}
        self.events: list[Event] = []
        self.wake: list[datetime] = []
        self.delete_job = False
        self.counted = 0
        self.finished: Phase | None = None
        self.accepted = False
        self.running_after: float | None = None

    # --- building blocks ---------------------------------------------------------------------------

    def event(self, type: EventType, reason: str, message: str, closing: bool = False) -> None:
        self.events.append(Event(type, reason, message, closing))

    def condition(self, kind: ConditionType, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(self.conditions, kind, value, reason, message, self.now)

    def delete(self, obj: Mapping[str, Any], why: str, kind: Literal["Pod", "Service"] = "Pod") -> None:
        if not podlib.terminating(obj):
            name = podlib.name(obj)
            self.deletes.setdefault(f"{kind}/{name}", Delete(kind, name, podlib.uid(obj), why))

    def patch_workload(self, status: dict[str, Any], why: str) -> None:
        wl = self.placed["Workload"]
        meta = wl.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "")
        self.patches.append(StatusPatch(queueing.KUEUE_API, "Workload", str(meta.get("name")), rv, status, why))

    def _restart_note(self) -> str:
        return f"restart {self.ledger.total}, backoffLimit {self.policy.backoff_limit}"

    def _framework(self) -> Framework | None:
        return self.desired.framework

    def _runs_until_stopped(self, pod: Mapping[str, Any]) -> bool:
        framework, which = self._framework(), podlib.replica_of(pod)
        if framework is None or which is None:
            return False
        role = next((r for r in framework.roles if r.name.lower() == which[0]), None)
        return role is not None and role.runs_until_stopped

    # --- the pass ----------------------------------------------------------------------------------

    def run(self) -> Plan:
        if self.job.metadata.deletion_timestamp:
            return Plan()  # the garbage collector removes the children with the job
        old = self.job.status or MLJobStatus()
        if terminal(old):
            self.after_finish()
        elif not self.desired.ok:
            self.invalid()
        elif self.policy.suspend:
            self.suspend()
        elif self.queue is not None and not self.admitted():
            pass
        else:
            self.running()
            if self.queue is not None and self.finished is None:
                self.report_pods_ready()
        return self.result()

    def finish(self, kind: ConditionType, reason: str, message: str) -> None:
        """Succeeded or Failed, on every path: condition, completion time, event, cleanPodPolicy."""
        self.condition(kind, True, reason, message)
        self.completion_time = self.now
        self.message = message
        self.finished = Phase.SUCCEEDED if kind is ConditionType.SUCCEEDED else Phase.FAILED
        self.event("Normal" if kind is ConditionType.SUCCEEDED else "Warning", reason, message, closing=True)
        self.creates.clear()
        self.deletes.clear()
        stopped = self.clean_up()
        self.replica_statuses = self.count_replicas(stopped_as_succeeded=stopped)
        self.ttl(self.now)
        for obj in self.desired.placement:  # the gang places nothing more: its scheduler may forget it
            meta = obj["metadata"]
            why = f"the job finished: its {obj['kind']} is no longer needed"
            self.deletes.setdefault(
                f"{obj['apiVersion']}/{obj['kind']}/{meta['name']}",
                Delete(obj["kind"], meta["name"], "", why, obj["apiVersion"]),
            )
        self.report_finished(kind is ConditionType.SUCCEEDED, message)

    def clean_up(self) -> set[str]:
        """Apply cleanPodPolicy and stop the roles that run until stopped; returns the stopped pods."""
        policy = self.policy.clean_pod_policy.value
        stopped: set[str] = set()
        for name, pod in self.pods.items():
            if not podlib.finished(pod) and self._runs_until_stopped(pod):
                self.delete(pod, "stopping a role that runs until stopped: the job finished")
                stopped.add(name)
            elif policy == "All" or (policy == "Running" and not podlib.finished(pod)):
                self.delete(pod, f"cleanPodPolicy {policy}: the job finished")
        if self.service is not None and policy != "None":
            self.delete(self.service, f"cleanPodPolicy {policy}: the job finished", kind="Service")
        return stopped

    def ttl(self, completed: datetime | None) -> None:
        seconds = self.policy.ttl_seconds_after_finished
        if seconds is None or completed is None:
            return
        expiry = completed + timedelta(seconds=seconds)
        if self.now >= expiry and self.finished is None:
            self.delete_job = True  # only from a pass that read the finished status back
        else:
            self.wake.append(expiry)

    def after_finish(self) -> None:
        """A finished job: keep the cleanup true (a pod may have appeared late) and honour the TTL."""
        self.clean_up()
        self.ttl(self.completion_time)
        old = self.job.status or MLJobStatus()
        self.report_finished(terminal(old) is ConditionType.SUCCEEDED, old.message)

    def invalid(self) -> None:
        if self.desired.unknown_framework and self.start_time is not None:
            # Not the job's fault: this operator lost the plugin (a bad upgrade). Failing every
            # running job of the framework would be worse than leaving them alone until it is back.
            message = f"{self.desired.problems[0]}; the job is left as it is until the framework is installed"
            if self.message != message:
                self.message = message
                self.event("Warning", "FrameworkMissing", message)
            return
        message = "; ".join(str(p) for p in self.desired.problems)
        self.finish(ConditionType.FAILED, self.desired.reason, message)

    def suspend(self) -> None:
        for pod in self.pods.values():
            self.delete(pod, "the job is suspended")
        if not is_true(self.job.status or MLJobStatus(), ConditionType.SUSPENDED):
            message = "the job is suspended: its pods are deleted until spec.runPolicy.suspend is false"
            for kind in (ConditionType.RUNNING, ConditionType.RESTARTING):
                self.conditions = clear_condition(self.conditions, kind, "Suspended", message, self.now)
            self.condition(ConditionType.SUSPENDED, True, "Suspended", message)
            self.start_time = None
            self.message = message
            self.event("Normal", "Suspended", message)
        self.replica_statuses = self.count_replicas()

    # --- Kueue ----------------------------------------------------------------------------------------

    def admitted(self) -> bool:
        """Whether Kueue lets the job run now; otherwise keep it without pods, saying why (Suspended, Queued)."""
        assert self.queue is not None
        wl = self.placed.get("Workload")
        granted = queueing.admission(wl, self.queue)
        if wl is None and self.desired.queued is not None:
            self.creates.append(self.desired.queued)
        if granted.admitted:
            old = self.job.status or MLJobStatus()
            found = next((c for c in old.conditions if c.type == ConditionType.SUSPENDED), None)
            if found is not None and found.status == "True" and found.reason == QUEUED:
                message = f"admitted by Kueue to ClusterQueue {granted.cluster_queue}"
                self.condition(ConditionType.SUSPENDED, False, "Admitted", message)
                self.message = message
                self.event("Normal", "Admitted", f"{message}: creating its pods")
            return True
        why = "evicted by Kueue" if granted.evicted is not None else "the job is not admitted by Kueue"
        for pod in self.pods.values():
            self.delete(pod, why)
        if granted.evicted is not None and granted.holds_quota and not self.pods:
            # Every pod is gone: give the quota back and queue again, as Kueue's own job controllers do.
            assert wl is not None
            requeue = str((queueing.condition(wl, "Evicted") or {}).get("reason") or "")
            conditions = queueing.set_conditions(
                wl,
                [
                    ("QuotaReserved", False, "Pending", granted.evicted),
                    ("Admitted", False, "NoReservation", "The workload has no reservation"),
                    ("Requeued", requeue in ("Preempted", "NodeFailures"), requeue or "Evicted", granted.evicted),
                ],
                self.now,
            )
            self.patch_workload({"admission": None, "conditions": conditions}, "the job's pods are gone")
        self.gate(granted.waiting)
        return False

    def gate(self, message: str) -> None:
        """Suspended with reason Queued: no pod until Kueue admits the job; the message says why it waits."""
        old = self.job.status or MLJobStatus()
        found = next((c for c in old.conditions if c.type == ConditionType.SUSPENDED), None)
        if not is_true_in(self.conditions, ConditionType.CREATED):
            self.condition(ConditionType.CREATED, True, "Created", "the job was accepted; it waits in its queue")
            self.accepted = True
        if found is None or found.status != "True" or found.reason != QUEUED:
            for kind in (ConditionType.RUNNING, ConditionType.RESTARTING):
                self.conditions = clear_condition(self.conditions, kind, QUEUED, message, self.now)
            self.event("Normal", QUEUED, message)
        self.condition(ConditionType.SUSPENDED, True, QUEUED, message)
        self.start_time = None
        self.message = message
        self.replica_statuses = self.count_replicas()

    def report_pods_ready(self) -> None:
        wl = self.placed.get("Workload")
        if wl is None:
            return
        if is_true_in(self.conditions, ConditionType.RUNNING):
            change = ("PodsReady", True, "Started", "All pods reached readiness and the workload is running")
        elif queueing.is_true(wl, "PodsReady") or queueing.condition(wl, "PodsReady") is None:
            reason = "WaitForRecovery" if queueing.is_true(wl, "PodsReady") else "WaitForStart"
            change = ("PodsReady", False, reason, "Not all pods are ready or succeeded")
        else:
            return
        conditions = queueing.set_conditions(wl, [change], self.now)
        if conditions is not None:
            self.patch_workload({"conditions": conditions}, "PodsReady")

    def report_finished(self, succeeded: bool, message: str) -> None:
        """Finished on the Workload: Kueue releases the job's quota."""
        wl = self.placed.get("Workload")
        if wl is None or queueing.is_true(wl, "Finished"):
            return
        reason = "Succeeded" if succeeded else "Failed"
        conditions = queueing.set_conditions(wl, [("Finished", True, reason, message or reason)], self.now)
        if conditions is not None:
            self.patch_workload({"conditions": conditions}, "the job finished")

    def admit(self, pod: dict[str, Any]) -> dict[str, Any]:
        """A pod about to be created, steered to the flavors Kueue assigned its role."""
        if self.queue is None:
            return pod
        granted = queueing.admission(self.placed.get("Workload"), self.queue)
        which = podlib.replica_of(pod)
        if which is None or not granted.flavors:
            return pod
        steered = copy.deepcopy(pod)
        queueing.admit_pod(steered, which[0], granted, self.flavors)
        return steered

    def running(self) -> None:
        framework = self._framework()
        assert framework is not None  # desired.ok
        old = self.job.status or MLJobStatus()
        suspended = next((c for c in old.conditions if c.type == ConditionType.SUSPENDED), None)
        if suspended is not None and suspended.status == "True" and suspended.reason != QUEUED:
            self.condition(ConditionType.SUSPENDED, False, "Resumed", "the job was resumed")
            self.message = "the job was resumed"
            self.event("Normal", "Resumed", "the job was resumed: recreating its pods")
        if not is_true(old, ConditionType.CREATED):
            self.condition(ConditionType.CREATED, True, "Created", "the job was accepted; creating its pods")
            self.accepted = True
        if self.start_time is None:
            self.start_time = self.now
            if self.ledger.spec:  # resumed: the pods are recreated from the spec as it is now
                self.ledger.started(self.desired.spec_hash)
        started = self.started_spec()
        self.ledger.spec = self.ledger.spec or started  # written with the first restart, not on its own
        frozen = started != self.desired.spec_hash
        if frozen and old.observed_generation != self.job.metadata.generation:
            message = (
                "spec.replicaSpecs changed while the job is running; the change is ignored (running pods keep "
                "the spec they started with); suspend the job to change it"
            )
            self.message = message
            self.event("Warning", "SpecChangeIgnored", message)

        seen = self.observe(framework)
        for note in seen.restarted:  # in-place restarts already happened, whatever this pass decides
            self.event("Warning", "Restarted", note)
        in_place = len(seen.restarted)
        if self.decide(framework, seen, frozen):
            return
        for retry in seen.retries:
            self.ledger.recreating(retry.record)
            self.ledger.count(retry.replica.role, 1)
            self.counted += 1
            self.delete(retry.pod, f"{retry.why}; recreating the pod")
            seen.restarted.append(f"{retry.why}; recreating the pod ({self._restart_note()})")
        for pod in seen.extra:
            self.delete(pod, "not in spec.replicaSpecs")
        hold = waits_for(self.desired.backend, self.placed.get("PodGroup"))
        if seen.missing and "PodGroup" not in self.placed:
            # The gang's objects first, so no pod is ever scheduled outside its group.
            self.creates.extend(self.desired.placement)
        if hold is None:
            self.creates.extend(self.admit(p) for p in seen.missing)
        elif seen.missing:
            seen.waiting = hold
        if self.service is None and self.desired.service is not None:
            self.creates.append(self.desired.service)
        for note in seen.restarted[in_place:]:
            self.event("Warning", "Restarted", note)
        if seen.restarted:
            self.message = seen.restarted[-1]
        self.progress(seen)
        deadline = self.deadline()
        if deadline is not None:
            self.wake.append(deadline)
        self.schedule_timeout(seen)

    def started_spec(self) -> str:
        """The fingerprint of the spec the running job's pods come from: its pods' label, else the ledger's.

        The pods carry it from their create (``mljob.io/spec-hash``), so a job that never restarts never
        writes its ledger; the ledger keeps it once written, for when none of those pods is left (a pod
        deleted to be recreated). A terminating pod does not count: a resumed job's old pods are going.
        With neither, nothing of an older spec runs, and the pods are created from the spec as it is.
        """
        marks = {podlib.fingerprint(p) for p in self.pods.values() if not podlib.terminating(p)} - {""}
        if marks:
            return min(marks - {self.desired.spec_hash}, default=self.desired.spec_hash)
        return self.ledger.spec or self.desired.spec_hash

    def schedule_timeout(self, seen: _Observed) -> None:
        """Fail the job whose pods were not all scheduled within scheduleTimeoutSeconds of their start."""
        scheduling = self.policy.scheduling_policy
        seconds = scheduling.schedule_timeout_seconds if scheduling is not None else None
        if seconds is None or self.start_time is None or self.finished is not None:
            return
        if any(c.type in (ConditionType.RUNNING, ConditionType.RESTARTING) for c in self.conditions):
            return  # it was placed whole once; later rescheduling is the restart policy's business
        unplaced = [n for n, p in self.pods.items() if not podlib.scheduled(p) and not podlib.finished(p)] + [
            podlib.name(p) for p in seen.missing
        ]
        if not unplaced:
            return
        expiry = self.start_time + timedelta(seconds=seconds)
        if self.now < expiry:
            self.wake.append(expiry)
            return
        detail = f": {seen.waiting}" if seen.waiting else ""
        message = (
            f"{len(unplaced)} of {len(self.desired.pods)} pods were not scheduled within "
            f"scheduleTimeoutSeconds ({seconds} s){detail}"
        )
        self.finish(ConditionType.FAILED, "ScheduleTimeout", message)

    def observe(self, framework: Framework) -> _Observed:
        """Phase A: every replica's outcome; count in-place restarts, which already happened."""
        seen = _Observed()
        rendered = {podlib.name(p): p for p in self.desired.pods}
        seen.extra = [p for n, p in self.pods.items() if n not in rendered]
        container = framework.container_name
        for replica, (pod_name, want) in zip(replicas_of(self.job), rendered.items(), strict=True):
            pod = self.pods.get(pod_name)
            if pod is None:
                seen.missing.append(want)
                seen.outcomes[replica] = Outcome.PENDING
                continue
            if podlib.terminating(pod):
                done = podlib.phase(pod) == podlib.SUCCEEDED
                seen.outcomes[replica] = Outcome.SUCCEEDED if done else Outcome.PENDING
                continue
            record = self.ledger.record(pod_name, podlib.uid(pod))
            new = self.ledger.saw(record, podlib.restarts(pod))
            if new:
                self.ledger.count(replica.role, new)
                self.counted += new
                why = podlib.last_stop_of(pod, container).describe(replica)
                seen.restarted.append(f"{why}; restarted in place ({self._restart_note()})")
            seen.outcomes[replica] = self.outcome(framework, replica, pod, record, seen)
        return seen

    def outcome(
        self, framework: Framework, replica: Replica, pod: Mapping[str, Any], record: PodRecord, seen: _Observed
    ) -> Outcome:
        phase = podlib.phase(pod)
        if phase == podlib.SUCCEEDED:
            return Outcome.SUCCEEDED
        if phase != podlib.FAILED and not podlib.lost(pod):
            if podlib.running(pod):
                return Outcome.RUNNING
            seen.waiting = seen.waiting or (
                f"{replica} is waiting: {reason}" if (reason := podlib.waiting_reason(pod)) else ""
            )
            return Outcome.PENDING
        stop = podlib.stop_of(pod, framework.container_name)
        policy = restart_policy(self.job, framework, replica.role)
        if policy is RestartPolicy.NEVER or (policy is RestartPolicy.EXIT_CODE and not stop.retryable):
            seen.failures.append(stop.describe(replica))
            return Outcome.FAILED
        if record.recreated:
            self.delete(pod, f"{stop.describe(replica)}; recreating the pod")  # counted by an earlier pass
        else:
            seen.retries.append(_Retry(replica, pod, record, stop.describe(replica)))
        return Outcome.PENDING

    def decide(self, framework: Framework, seen: _Observed, frozen: bool) -> bool:
        """Phase B: whether the job finishes now, and how. Success wins over every failure."""
        try:
            succeeded = framework.succeeded(self.job, seen.outcomes)
        except Exception as error:
            self.finish(ConditionType.FAILED, PLUGIN_ERROR, str(PluginError(framework.name, "succeeded", error)))
            return True
        if succeeded:
            self.finish(ConditionType.SUCCEEDED, "Succeeded", "the job succeeded")
            return True
        if seen.failures:
            more = f" (and {len(seen.failures) - 1} more)" if len(seen.failures) > 1 else ""
            self.finish(ConditionType.FAILED, "ReplicaFailed", seen.failures[0] + more)
            return True
        limit = self.policy.backoff_limit
        if self.ledger.total > limit or self.ledger.total + len(seen.retries) > limit:
            if seen.retries:
                last = seen.retries[0].why
            else:
                last = seen.restarted[-1].split(";")[0] if seen.restarted else "too many restarts"
            message = f"{last}; backoffLimit {limit} reached ({self.ledger.total} restarts)"
            self.finish(ConditionType.FAILED, "BackoffLimitExceeded", message)
            return True
        deadline = self.deadline()
        if deadline is not None and self.now >= deadline:
            assert self.start_time is not None
            message = (
                f"activeDeadlineSeconds ({self.policy.active_deadline_seconds}s) passed since "
                f"startTime {format_time(self.start_time)}"
            )
            self.finish(ConditionType.FAILED, "DeadlineExceeded", message)
            return True
        if frozen and (seen.missing or seen.retries or seen.extra):
            names = [podlib.name(p) for p in [*seen.missing, *(r.pod for r in seen.retries), *seen.extra]]
            message = (
                f"spec.replicaSpecs changed while the job was running and pod {names[0]} would have to be "
                "created or removed with the new spec; suspend the job to change its spec"
            )
            self.finish(ConditionType.FAILED, "SpecChanged", message)
            return True
        return False

    def deadline(self) -> datetime | None:
        seconds = self.policy.active_deadline_seconds
        if seconds is None or self.start_time is None:
            return None
        return self.start_time + timedelta(seconds=seconds)

    def progress(self, seen: _Observed) -> None:
        """Running when every unfinished replica runs; Restarting once it has run and one does not."""
        unfinished = [o for o in seen.outcomes.values() if o is not Outcome.SUCCEEDED]
        all_running = bool(unfinished) and all(o is Outcome.RUNNING for o in unfinished)
        has_run = any(is_true_in(self.conditions, k) for k in (ConditionType.RUNNING, ConditionType.RESTARTING))
        if all_running:
            message = f"{len(unfinished)} of {len(seen.outcomes)} replicas running"
            if not any(c.type == ConditionType.RUNNING for c in self.conditions):  # the first time, ever
                created = parse_time(self.job.metadata.creation_timestamp)
                if created is not None:
                    self.running_after = max(0.0, (self.now - created).total_seconds())
            # No event: the Running condition (with its lastTransitionTime) says it, at no extra request.
            self.condition(ConditionType.RUNNING, True, "Running", message)
        elif has_run or self.counted:
            reason = seen.restarted[-1] if seen.restarted else "a replica is not running"
            if not is_true_in(self.conditions, ConditionType.RESTARTING):
                self.condition(ConditionType.RESTARTING, True, "Restarting", reason)
        if seen.waiting and not seen.restarted:
            self.message = seen.waiting
        self.replica_statuses = self.count_replicas()

    def count_replicas(self, stopped_as_succeeded: set[str] | None = None) -> dict[str, ReplicaStatus]:
        """Counts per role from the pods that stay; pods this pass deletes are no longer active."""
        deleting = {d.name for d in self.deletes.values() if d.kind == "Pod"}
        stopped = stopped_as_succeeded or set()
        result: dict[str, ReplicaStatus] = {}
        for role in self.job.spec.replica_specs:
            active = succeeded = failed = 0
            for name, pod in self.pods.items():
                which = podlib.replica_of(pod)
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

    def result(self) -> Plan:
        old = self.job.status
        new = MLJobStatus(
            phase=derive_phase(self.conditions),
            conditions=self.conditions,
            replica_statuses=self.replica_statuses,
            restart_count=self.ledger.total,
            start_time=self.start_time,
            completion_time=self.completion_time,
            observed_generation=self.job.metadata.generation,
            message=self.message,
        )
        annotations = None
        if self.ledger.changed:
            live = [podlib.uid(p) for p in self.pods.values()]
            annotations = {LEDGER_ANNOTATION: self.ledger.dump(live)}
        return Plan(
            creates=tuple(self.creates),
            deletes=tuple(self.deletes.values()),
            status=status_patch(old, new),
            annotations=annotations,
            events=tuple(self.events),
            wake_at=min(self.wake) if self.wake else None,
            delete_job=self.delete_job,
            restarts=self.counted,
            finished=self.finished,
            patches=tuple(self.patches),
            accepted=self.accepted,
            running_after=self.running_after,
        )


def is_true_in(conditions: Sequence[Any], kind: ConditionType) -> bool:
    return any(c.type == kind and c.status == "True" for c in conditions)
