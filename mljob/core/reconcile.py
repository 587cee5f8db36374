"""The reconciler's pure core: (job, what it should be, observed children, now) -> a frozen plan.

No I/O and no clock: the operator feeds it watch-stream state and ``now`` and applies the
:class:`~mljob.core.plan.Plan`; tests feed it builders. What happens to a job when a replica exits
is the rulebook's (:mod:`mljob.core.rules`, shared with ``mljob run``); this module turns pods into
what the rulebook reads and its judgement into creates, deletes and status.

Choices (see also :mod:`mljob.core.status` for the restart ledger):

* **Children are exactly what** :func:`mljob.core.render.render` **prints.** Names are deterministic, so
  a create is idempotent; a pod still terminating keeps its name taken and is waited for.
  A child counts only with a controller ownerReference to this job's uid, whatever its labels.
* **Restarts.** ``Always``/``OnFailure`` pods restart in place (the kubelet does it; container
  ``restartCount`` increases are counted); a pod that fails as a whole is recreated when the rulebook
  retries its exit. Every restart counts against ``backoffLimit``. A pod someone else deletes is
  recreated without counting: it did not fail.
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mljob.api import ConditionType, ElasticStatus, MLJob, Phase, parse_time
from mljob.core import children as podlib
from mljob.core import kueue as queueing
from mljob.core import rules
from mljob.core.desired import Desired, Placement, desire, placement_problems, reject
from mljob.core.kinds import JobKind, dispatched
from mljob.core.kueue import QUEUED
from mljob.core.names import LABEL_JOB, LABEL_ROLE
from mljob.core.placement import waits_for
from mljob.core.plan import Delete, Draft, Event, Plan, StatusPatch
from mljob.core.rules import Seen, State
from mljob.core.status import PodRecord, clear_condition, condition, is_true, terminal
from mljob.framework import Elastic, Framework, Outcome, Replica, replicas_of

__all__ = [
    "QUEUED",
    "Delete",
    "Desired",
    "Event",
    "Placement",
    "Plan",
    "StatusPatch",
    "desire",
    "placement_problems",
    "plan",
    "reject",
]


def plan(
    job: MLJob,
    desired: Desired,
    pods: Sequence[Mapping[str, Any]],
    services: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    now: datetime,
    placed: Mapping[str, Mapping[str, Any]] | None = None,
    flavors: Mapping[str, Mapping[str, Any]] | None = None,
    refused: str | None = None,
) -> Plan:
    """One reconcile pass for ``job``, given every pod and the service(s) the watch stream has seen for it.

    ``placed`` holds the job's objects that a scheduler or queue writes status on, by kind: its Kueue
    ``Workload`` and its Volcano ``PodGroup``; ``flavors`` the ResourceFlavors its admission names.
    ``refused`` is why the API server refused a child in the last pass (a missing PriorityClass, a
    quota): the job's message says so, with one FailedCreate event, while the pass is retried.
    """
    if job.metadata.deletion_timestamp:
        return Plan()  # the garbage collector removes the children with the job
    draft = Draft(job, now, pods, services, placed, desired.kind)
    queue = queueing.queue_name(job) if desired.kind.owns_workload else None  # else Kueue's own integration
    if dispatched(job) and desired.ok:  # an invalid one is failed here: no other cluster will say why
        return queueing.dispatch(draft, queue, desired.queued)
    if terminal(draft.old):
        _after_finish(draft, desired)
    elif not desired.ok:
        _invalid(draft, desired)
    elif job.spec.run_policy.suspend:
        _suspend(draft)
    elif queue is None or queueing.admitted(draft, queue, desired.queued):
        _running(draft, desired, flavors or {})
        if queue is not None and draft.finished is None:
            queueing.report_pods_ready(draft)
    if refused and draft.finished is None and not terminal(draft.old):
        if draft.old.message != refused:
            draft.event("Warning", "FailedCreate", refused)
        draft.message = refused
    return draft.plan()


@dataclass
class _Observed:
    """What a running pass saw of each replica, in the rulebook's terms, and of the pods around them."""

    seen: dict[Replica, Seen] = field(default_factory=dict)
    pods: dict[Replica, Mapping[str, Any]] = field(default_factory=dict)
    records: dict[Replica, PodRecord] = field(default_factory=dict)
    restarted: list[str] = field(default_factory=list)
    """Notes of the restarts that happened (in place) or this pass orders (recreations), in order."""
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[Mapping[str, Any]] = field(default_factory=list)
    waiting: str = ""


def _running(draft: Draft, desired: Desired, flavors: Mapping[str, Mapping[str, Any]]) -> None:
    """A job that may run: judge what its replicas did, then create, delete and report."""
    framework = desired.framework
    assert framework is not None  # desired.ok
    _start(draft, desired)
    frozen = _frozen(draft, desired)
    seen = _observe(draft, desired, framework)
    for note in seen.restarted:  # in-place restarts already happened, whatever this pass decides
        draft.event("Warning", "Restarted", note)
    in_place = len(seen.restarted)
    changes = [podlib.name(p) for p in [*seen.missing, *seen.extra]] if frozen else None
    judgement = rules.judge(draft.job, framework, seen.seen, draft.ledger.total, draft.start_time, draft.now, changes)
    if judgement.finish is not None:
        _finish(draft, desired, judgement.finish)
        return
    _restart(draft, judgement, seen)
    for pod in seen.extra:
        draft.delete(pod, "not in spec.replicaSpecs")
    _create(draft, desired, seen, flavors)
    for note in seen.restarted[in_place:]:
        draft.event("Warning", "Restarted", note)
    if seen.restarted:
        draft.message = seen.restarted[-1]
    _progress(draft, seen, judgement, desired.elastic)
    _membership(draft, desired)
    if judgement.deadline is not None:
        draft.wake.append(judgement.deadline)
    _schedule_timeout(draft, desired, seen)


def _start(draft: Draft, desired: Desired) -> None:
    """Created (once), Resumed after a suspension, and the start time the deadline counts from."""
    suspended = condition(draft.old, ConditionType.SUSPENDED)
    if suspended is not None and suspended.status == "True" and suspended.reason != QUEUED:
        draft.condition(ConditionType.SUSPENDED, False, "Resumed", "the job was resumed")
        draft.message = "the job was resumed"
        draft.event("Normal", "Resumed", "the job was resumed: recreating its pods")
    if not is_true(draft.old, ConditionType.CREATED):
        draft.condition(ConditionType.CREATED, True, "Created", "the job was accepted; creating its pods")
        draft.accepted = True
    if draft.start_time is None:
        draft.start_time = draft.now
        if draft.ledger.spec:  # resumed: the pods are recreated from the spec as it is now
            draft.ledger.started(desired.spec_hash)


def _frozen(draft: Draft, desired: Desired) -> bool:
    """Whether the spec changed since the running pods were created (the change is then not applied)."""
    started = _started_spec(draft, desired)
    draft.ledger.spec = draft.ledger.spec or started  # written with the first restart, not on its own
    frozen = started != desired.spec_hash
    if frozen and draft.old.observed_generation != draft.job.metadata.generation:
        message = (
            "spec.replicaSpecs changed while the job is running; the change is ignored (running pods keep "
            "the spec they started with); suspend the job to change it"
        )
        draft.message = message
        draft.event("Warning", "SpecChangeIgnored", message)
    return frozen


def _started_spec(draft: Draft, desired: Desired) -> str:
    """The fingerprint of the spec the running job's pods come from: its pods' label, else the ledger's.

    The pods carry it from their create (``mljob.io/spec-hash``), so a job that never restarts never
    writes its ledger; the ledger keeps it once written, for when none of those pods is left (a pod
    deleted to be recreated). A terminating pod does not count: a resumed job's old pods are going.
    With neither, nothing of an older spec runs, and the pods are created from the spec as it is.
    """
    marks = {podlib.fingerprint(p) for p in draft.pods.values() if not podlib.terminating(p)} - {""}
    if marks:
        return min(marks - {desired.spec_hash}, default=desired.spec_hash)
    return draft.ledger.spec or desired.spec_hash


def _observe(draft: Draft, desired: Desired, framework: Framework) -> _Observed:
    """Each replica's pod in the rulebook's terms; in-place restarts, which already happened, are counted."""
    seen = _Observed()
    rendered = {podlib.name(p): p for p in desired.pods}
    seen.extra = [p for n, p in draft.pods.items() if n not in rendered]
    container = framework.container_name
    for replica, (pod_name, want) in zip(replicas_of(draft.job), rendered.items(), strict=True):
        pod = draft.pods.get(pod_name)
        if pod is None:
            seen.missing.append(want)
            seen.seen[replica] = Seen(State.PENDING)
            continue
        seen.pods[replica] = pod
        if podlib.terminating(pod):
            done = podlib.phase(pod) == podlib.SUCCEEDED
            seen.seen[replica] = Seen(State.SUCCEEDED if done else State.PENDING)
            continue
        record = seen.records[replica] = draft.ledger.record(pod_name, podlib.uid(pod))
        restarted = None
        new = draft.ledger.saw(record, podlib.restarts(pod))
        if new:
            draft.ledger.count(replica.role, new)
            draft.counted += new
            restarted = podlib.last_stop_of(pod, container)
            seen.restarted.append(f"{restarted.describe(replica)}; restarted in place ({_restart_note(draft)})")
        seen.seen[replica] = _seen(pod, container, record, restarted)
        if seen.seen[replica].state is State.PENDING and not seen.waiting:
            reason = podlib.waiting_reason(pod)
            seen.waiting = f"{replica} is waiting: {reason}" if reason else ""
    return seen


def _seen(pod: Mapping[str, Any], container: str, record: PodRecord, restarted: rules.Stop | None) -> Seen:
    """One pod as the rulebook reads it."""
    phase = podlib.phase(pod)
    if phase == podlib.SUCCEEDED:
        return Seen(State.SUCCEEDED, restarted=restarted)
    if phase != podlib.FAILED and not podlib.lost(pod):
        return Seen(State.RUNNING if podlib.running(pod) else State.PENDING, restarted=restarted)
    return Seen(State.EXITED, podlib.stop_of(pod, container), counted=record.recreated, restarted=restarted)


def _restart_note(draft: Draft) -> str:
    return f"restart {draft.ledger.total}, backoffLimit {draft.job.spec.run_policy.backoff_limit}"


def _restart(draft: Draft, judgement: rules.Judgement, seen: _Observed) -> None:
    """Recreate the pods the rulebook restarts: counted first (the ledger), then deleted to be created anew."""
    for restart in judgement.restarts:
        pod = seen.pods[restart.replica]
        draft.delete(pod, f"{restart.why}; recreating the pod")
        if restart.counted:
            continue  # counted by an earlier pass, whose delete has not been seen yet
        draft.ledger.recreating(seen.records[restart.replica])
        draft.ledger.count(restart.replica.role, 1)
        draft.counted += 1
        seen.restarted.append(f"{restart.why}; recreating the pod ({_restart_note(draft)})")


def _create(draft: Draft, desired: Desired, seen: _Observed, flavors: Mapping[str, Mapping[str, Any]]) -> None:
    """The missing pods (after the gang's objects, held while its scheduler says so) and services."""
    hold = waits_for(desired.backend, draft.placed.get("PodGroup"))
    if seen.missing:  # what the pods mount, first: idempotent, an existing one kept (not watched, so not known here)
        draft.creates.extend(desired.objects)
    if seen.missing and "PodGroup" not in draft.placed:
        # The gang's objects first, so no pod is ever scheduled outside its group.
        draft.creates.extend(desired.placement)
    generation = draft.job.metadata.generation
    if draft.old.observed_generation not in (None, generation):
        # The spec moved since the status was last written (minAvailable lowered to let a gang start): what the
        # gang's scheduler reads follows it. Its pods, which never change, are not touched.
        draft.updates.extend(desired.placement)
    if hold is None:
        missing, held = _held_back(draft, desired, seen.missing)
        draft.creates.extend(queueing.steer(draft, p, flavors) for p in missing)
        if held:
            seen.waiting = held
    elif seen.missing:
        seen.waiting = hold
    draft.creates.extend(s for s in desired.services if podlib.name(s) not in draft.services)


def _held_back(draft: Draft, desired: Desired, missing: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The missing pods that may be created now, and why the others wait (:meth:`Framework.starts_after`)."""
    framework = desired.framework
    assert framework is not None
    if not missing:  # the common pass: nothing to create, nothing to index
        return [], ""
    by_role: dict[str, list[str]] = {}
    for pod in desired.pods:
        found = podlib.replica_of(pod, draft.kind)
        if found is not None:
            by_role.setdefault(found[0], []).append(podlib.name(pod))
    roles = {r.lower(): r for r in draft.job.spec.replica_specs}
    now: list[dict[str, Any]] = []
    why = ""
    for pod in missing:
        found = podlib.replica_of(pod, draft.kind)
        replica = Replica(roles.get(found[0], found[0]), found[1]) if found is not None else None
        awaited = framework.starts_after(draft.job, replica) if replica is not None else ()
        short = []
        for role in awaited:
            names = by_role.get(role.lower(), [])
            ready = [n for n in names if n in draft.pods and podlib.ready(draft.pods[n])]
            if len(ready) < len(names):
                short.append(f"{len(ready)} of {len(names)} {role} ready")
        if short:
            why = why or f"{podlib.name(pod)} waits for its peers to be ready: {', '.join(short)}"
        else:
            now.append(pod)
    return now, why


def _progress(draft: Draft, seen: _Observed, judgement: rules.Judgement, elastic: Elastic | None = None) -> None:
    """Running when every unfinished replica runs; Restarting once it has run and one does not.

    An elastic job runs on while at least its minimum of the elastic role runs: a member lost or being added (a
    scale-up's new pod) is not a restart of the job; its status.elastic and MembershipChanged events say it."""
    outcomes = dict(judgement.outcomes)
    if elastic is not None:
        members = [r for r in outcomes if r.role == elastic.role]
        if sum(outcomes[r] is Outcome.RUNNING for r in members) >= elastic.min_replicas:
            outcomes = {r: o for r, o in outcomes.items() if r.role != elastic.role or o is Outcome.RUNNING}
    unfinished = [o for o in outcomes.values() if o is not Outcome.SUCCEEDED]
    all_running = bool(unfinished) and all(o is Outcome.RUNNING for o in unfinished)
    has_run = draft.is_true(ConditionType.RUNNING) or draft.is_true(ConditionType.RESTARTING)
    if all_running:
        message = f"{len(unfinished)} of {len(outcomes)} replicas running"
        if not any(c.type == ConditionType.RUNNING for c in draft.conditions):  # the first time, ever
            created = parse_time(draft.job.metadata.creation_timestamp)
            if created is not None:
                draft.running_after = max(0.0, (draft.now - created).total_seconds())
        # No event: the Running condition (with its lastTransitionTime) says it, at no extra request.
        draft.condition(ConditionType.RUNNING, True, "Running", message)
    elif has_run or draft.counted:
        reason = seen.restarted[-1] if seen.restarted else "a replica is not running"
        if not draft.is_true(ConditionType.RESTARTING):
            draft.condition(ConditionType.RESTARTING, True, "Restarting", reason)
    if seen.waiting and not seen.restarted:
        draft.message = seen.waiting
    draft.replica_statuses = draft.count_replicas()


def _membership(draft: Draft, desired: Desired) -> None:
    """An elastic job's membership in its status (the elastic role's pods running now), its pods' selector for
    the scale subresource, and an event each time the count moves: a worker lost, one added by ``kubectl scale``."""
    elastic = desired.elastic
    if elastic is None:
        return
    role = elastic.role.lower()
    going = {d.name for d in draft.deletes.values() if d.kind == "Pod"}
    running = sum(
        1
        for name, pod in draft.pods.items()
        if name not in going
        and (found := podlib.replica_of(pod, draft.kind)) is not None
        and found[0] == role
        and podlib.running(pod)
        and not podlib.terminating(pod)
    )
    before = draft.old.elastic
    draft.elastic = ElasticStatus(running=running, min_replicas=elastic.min_replicas, max_replicas=elastic.max_replicas)
    draft.selector = ",".join(f"{k}={v}" for k, v in {LABEL_JOB: draft.job.name, LABEL_ROLE: role}.items())
    if before is not None and before.running != running:
        wanted = (
            draft.job.spec.replica_specs[elastic.role].replicas if elastic.role in draft.job.spec.replica_specs else 0
        )
        message = (
            f"{running} of {wanted} {elastic.role} replicas running, was {before.running} "
            f"(elastic: {elastic.min_replicas} to {elastic.max_replicas})"
        )
        draft.event("Normal" if running >= elastic.min_replicas else "Warning", "MembershipChanged", message)


def _schedule_timeout(draft: Draft, desired: Desired, seen: _Observed) -> None:
    """Fail the job whose pods were not all scheduled within scheduleTimeoutSeconds of their start."""
    scheduling = draft.job.spec.run_policy.scheduling_policy
    seconds = scheduling.schedule_timeout_seconds if scheduling is not None else None
    if seconds is None or draft.start_time is None or draft.finished is not None:
        return
    if any(c.type in (ConditionType.RUNNING, ConditionType.RESTARTING) for c in draft.conditions):
        return  # it was placed whole once; later rescheduling is the restart policy's business
    unplaced = [n for n, p in draft.pods.items() if not podlib.scheduled(p) and not podlib.finished(p)] + [
        podlib.name(p) for p in seen.missing
    ]
    if not unplaced:
        return
    expiry = draft.start_time + timedelta(seconds=seconds)
    if draft.now < expiry:
        draft.wake.append(expiry)
        return
    detail = f": {seen.waiting}" if seen.waiting else ""
    message = (
        f"{len(unplaced)} of {len(desired.pods)} pods were not scheduled within "
        f"scheduleTimeoutSeconds ({seconds} s){detail}"
    )
    _finish(draft, desired, rules.Finish(False, "ScheduleTimeout", message))


def _finish(draft: Draft, desired: Desired, finish: rules.Finish) -> None:
    """Succeeded or Failed, on every path: condition, completion time, event, cleanPodPolicy."""
    kind = ConditionType.SUCCEEDED if finish.succeeded else ConditionType.FAILED
    draft.condition(kind, True, finish.reason, finish.message)
    draft.completion_time = draft.now
    draft.message = finish.message
    draft.finished = Phase.SUCCEEDED if finish.succeeded else Phase.FAILED
    draft.event("Normal" if finish.succeeded else "Warning", finish.reason, finish.message, closing=True)
    draft.creates.clear()
    draft.deletes.clear()
    stopped = _clean_up(draft, desired)
    draft.replica_statuses = draft.count_replicas(stopped_as_succeeded=stopped)
    _ttl(draft, draft.now)
    for obj in desired.placement:  # the gang places nothing more: its scheduler may forget it
        meta = obj["metadata"]
        why = f"the job finished: its {obj['kind']} is no longer needed"
        draft.deletes.setdefault(
            f"{obj['apiVersion']}/{obj['kind']}/{meta['name']}",
            Delete(obj["kind"], meta["name"], "", why, obj["apiVersion"]),
        )
    queueing.report_finished(draft, finish.succeeded, finish.message)


def _clean_up(draft: Draft, desired: Desired) -> set[str]:
    """Apply cleanPodPolicy and stop the roles that run until stopped; returns the stopped pods."""
    policy = draft.job.spec.run_policy.clean_pod_policy.value
    stopped: set[str] = set()
    for name, pod in draft.pods.items():
        if not podlib.finished(pod) and _runs_until_stopped(desired.framework, pod, draft.kind):
            draft.delete(pod, "stopping a role that runs until stopped: the job finished")
            stopped.add(name)
        elif policy == "All" or (policy == "Running" and not podlib.finished(pod)):
            draft.delete(pod, f"cleanPodPolicy {policy}: the job finished")
    if policy != "None":
        for service in draft.services.values():
            draft.delete(service, f"cleanPodPolicy {policy}: the job finished", kind="Service")
    return stopped


def _runs_until_stopped(framework: Framework | None, pod: Mapping[str, Any], kind: JobKind) -> bool:
    which = podlib.replica_of(pod, kind)
    if framework is None or which is None:
        return False
    role = next((r for r in framework.roles if r.name.lower() == which[0]), None)
    return role is not None and role.runs_until_stopped


def _ttl(draft: Draft, completed: datetime | None) -> None:
    seconds = draft.job.spec.run_policy.ttl_seconds_after_finished
    if seconds is None or completed is None:
        return
    expiry = completed + timedelta(seconds=seconds)
    if draft.now >= expiry and draft.finished is None:
        draft.delete_job = True  # only from a pass that read the finished status back
    else:
        draft.wake.append(expiry)


def _after_finish(draft: Draft, desired: Desired) -> None:
    """A finished job: keep the cleanup true (a pod may have appeared late) and honour the TTL."""
    _clean_up(draft, desired)
    _ttl(draft, draft.completion_time)
    queueing.report_finished(draft, terminal(draft.old) is ConditionType.SUCCEEDED, draft.old.message)


def _invalid(draft: Draft, desired: Desired) -> None:
    if desired.unknown_framework and draft.start_time is not None:
        # Not the job's fault: this operator lost the plugin (a bad upgrade). Failing every
        # running job of the framework would be worse than leaving them alone until it is back.
        message = f"{desired.problems[0]}; the job is left as it is until the framework is installed"
        if draft.message != message:
            draft.message = message
            draft.event("Warning", "FrameworkMissing", message)
        return
    message = "; ".join(str(p) for p in desired.problems)
    _finish(draft, desired, rules.Finish(False, desired.reason, message))


def _suspend(draft: Draft) -> None:
    for pod in draft.pods.values():
        draft.delete(pod, "the job is suspended")
    if not is_true(draft.old, ConditionType.SUSPENDED):
        message = "the job is suspended: its pods are deleted until spec.runPolicy.suspend is false"
        for kind in (ConditionType.RUNNING, ConditionType.RESTARTING):
            draft.conditions = clear_condition(draft.conditions, kind, "Suspended", message, draft.now)
        draft.condition(ConditionType.SUSPENDED, True, "Suspended", message)
        draft.start_time = None
        draft.message = message
        draft.event("Normal", "Suspended", message)
    draft.replica_statuses = draft.count_replicas()
