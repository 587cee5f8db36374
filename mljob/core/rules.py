"""The rulebook: what happens to a job, given what each of its replicas did.

Every front end asks this module and keeps no rule of its own: the operator's planner
(:mod:`mljob.core.reconcile`, which sees pods) and ``mljob run`` (:mod:`mljob.local.policy`, which
sees processes). Each turns what it observed into a :class:`Seen` per replica and applies the
:class:`Judgement` its own way (delete and create pods; spawn and kill processes).

Order of precedence, first match wins (docs/job-lifecycle.md):

1. **Success**: the framework's success rule is met. The job's result exists (a chief that saved its
   model and exited 0); a worker failing in the same instant does not undo it.
2. **A permanent failure**: a replica exited and its restart policy does not retry that exit
   (``Never``; ``ExitCode`` with 1-127); never a replica of an elastic job's elastic role, which is replaced.
   Also: every replica has finished and the success rule is
   still not met (nothing is left that could meet it). Of several failures in one look, a role that
   runs until stopped is named first (it never exits because a peer did: an MPI worker whose death
   ended its launcher's ``mpirun``), then replica order.
3. **backoffLimit**: the restarts so far plus the ones this exit needs would exceed it.
4. **activeDeadlineSeconds** passed since the start.
5. **A spec change** that running pods would have to pick up (the operator only).

Why this order: 1 and 2 say what the replicas themselves did, which is what a person acts on; 3 and
4 are budgets the job ran out of. Between two budgets, backoffLimit comes first as in Kubeflow's
training-operator. Every restart, in place or by recreation, counts against backoffLimit.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mljob.api import MLJob, RestartPolicy, format_time
from mljob.core.names import pod_name
from mljob.core.render import restart_policy
from mljob.core.validation import PLUGIN_ERROR
from mljob.framework import Framework, Outcome, Replica
from mljob.plugins import PluginError

SUCCEEDED = "Succeeded"
REPLICA_FAILED = "ReplicaFailed"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
SPEC_CHANGED = "SpecChanged"

SUCCEEDED_MESSAGE = "the job succeeded"

LOST_NODE_REASONS = frozenset({"NodeLost"})
"""Pod ``status.reason`` values that mean the node went away while the pod was not terminal."""

SIGNAL_EXIT = 128
"""Exit codes from here up mean the process was killed by a signal (128 + signal number)."""


@dataclass(frozen=True)
class Stop:
    """Why a replica's process stopped: an exit code with the kubelet's reason, or a pod-level reason."""

    code: int | None = None
    reason: str = ""
    pod_reason: str = ""
    message: str = ""

    @classmethod
    def of_returncode(cls, returncode: int) -> Stop:
        """A local process's end as the kubelet reports it: killed by signal N is code 128+N, reason its name."""
        if returncode >= 0:
            return cls(code=returncode)
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return cls(code=SIGNAL_EXIT - returncode, reason=name)

    @property
    def succeeded(self) -> bool:
        """Exit 0 of the process itself (a pod evicted after its container exited 0 did not succeed)."""
        return self.code == 0 and not self.pod_reason

    @property
    def retryable(self) -> bool:
        """ExitCode semantics: killed by a signal (128+), evicted or lost its node; not a code 1-127."""
        if self.pod_reason:
            return True
        return self.code is None or self.code >= SIGNAL_EXIT

    def describe(self, replica: Replica | str) -> str:
        """``worker-2 exited with code 137 (OOMKilled)``, ``worker-0 was evicted: <why>``."""
        if self.pod_reason == "Evicted":
            return f"{replica} was evicted" + (f": {self.message}" if self.message else "")
        if self.pod_reason in LOST_NODE_REASONS:
            return f"{replica} lost its node ({self.pod_reason})"
        if self.pod_reason:
            return f"{replica} failed ({self.pod_reason})" + (f": {self.message}" if self.message else "")
        if self.code is None:
            return f"{replica} failed" + (f": {self.message}" if self.message else "")
        return f"{replica} exited with code {self.code}" + (f" ({self.reason})" if self.reason else "")


class Verdict(StrEnum):
    """What one exit means under a restart policy."""

    SUCCEEDED = "succeeded"
    RESTART = "restart"
    FAILED = "failed"


def verdict(policy: RestartPolicy, stop: Stop) -> Verdict:
    """The one definition of which exits are retried.

    ``Always`` restarts on every exit, success included, as a pod with ``restartPolicy: Always`` does.
    ``OnFailure`` restarts every failure. ``ExitCode`` treats 1-127 as the program's own, permanent
    failure and 128+ (killed by a signal), an eviction or a lost node as something done to it, worth
    retrying. ``Never`` retries nothing.
    """
    if policy is RestartPolicy.ALWAYS:
        return Verdict.RESTART
    if stop.succeeded:
        return Verdict.SUCCEEDED
    if policy is RestartPolicy.ON_FAILURE or (policy is RestartPolicy.EXIT_CODE and stop.retryable):
        return Verdict.RESTART
    return Verdict.FAILED


class State(StrEnum):
    """Where one replica stands, as a front end observed it."""

    PENDING = "Pending"
    """Not running yet: not started, its pod not created or not scheduled, waiting to start again."""
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    """Finished by itself with success (a pod in phase Succeeded)."""
    EXITED = "Exited"
    """Stopped and not started again (yet): :attr:`Seen.stop` says how; the restart policy decides."""


@dataclass(frozen=True)
class Seen:
    """What a front end knows about one replica now."""

    state: State = State.PENDING
    stop: Stop | None = None
    """How an EXITED replica stopped."""
    counted: bool = False
    """An EXITED replica whose restart an earlier look already counted (its pod is being recreated)."""
    restarted: Stop | None = None
    """Why it restarted in place since the last look (the kubelet did it); already in the restart count."""


@dataclass(frozen=True)
class Restart:
    """Start a replica again after it exited; ``counted`` when an earlier look counted it already."""

    replica: Replica
    why: str
    counted: bool = False


@dataclass(frozen=True)
class Finish:
    """The job ends: succeeded or not, the condition's reason, and the message a person reads."""

    succeeded: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Judgement:
    """What happens next: the job finishes, or these replicas restart and the rest carry on."""

    outcomes: Mapping[Replica, Outcome]
    finish: Finish | None = None
    restarts: tuple[Restart, ...] = ()
    """Empty when the job finishes."""
    deadline: datetime | None = None
    """When activeDeadlineSeconds runs out: look again then if nothing else happens."""


def deadline(job: MLJob, started: datetime | None) -> datetime | None:
    """When the job's activeDeadlineSeconds runs out, counted from its start; None without one."""
    seconds = job.spec.run_policy.active_deadline_seconds
    if seconds is None or started is None:
        return None
    return started + timedelta(seconds=seconds)


def judge(
    job: MLJob,
    framework: Framework,
    seen: Mapping[Replica, Seen],
    restarts: int,
    started: datetime | None,
    now: datetime,
    spec_changes: Sequence[str] | None = None,
) -> Judgement:
    """What happens to ``job`` now; the precedence is the module's.

    ``seen`` holds every replica; ``restarts`` is the job's restart count so far, in-place restarts
    seen in this look included. ``spec_changes``, given only when the spec changed while the job runs,
    names the pods that would have to be created or removed with the new spec.
    """
    outcomes: dict[Replica, Outcome] = {}
    failures: list[tuple[Replica, str]] = []
    wanted: list[Restart] = []
    restarted: list[str] = []  # why each replica restarted just now or must restart, in replica order
    try:
        elastic = framework.elastic(job)
    except Exception as error:
        return Judgement(outcomes, Finish(False, PLUGIN_ERROR, str(PluginError(framework.name, "elastic", error))))
    elastic_role = elastic.role if elastic is not None else None
    for replica, now_seen in seen.items():
        if now_seen.restarted is not None:
            restarted.append(now_seen.restarted.describe(replica))
        outcomes[replica] = _outcome(job, framework, replica, now_seen, failures, wanted, elastic_role)
        if wanted and wanted[-1].replica == replica and not wanted[-1].counted:
            restarted.append(wanted[-1].why)
    ends = deadline(job, started)
    finish = _finish(job, framework, outcomes, failures, wanted, restarts, restarted, started, ends, now)
    if finish is None and spec_changes is not None:
        names = [*spec_changes, *(pod_name(job.metadata.name, r.replica) for r in wanted if not r.counted)]
        if names:
            message = (
                f"spec.replicaSpecs changed while the job was running and pod {names[0]} would have to be "
                "created or removed with the new spec; suspend the job to change its spec"
            )
            finish = Finish(False, SPEC_CHANGED, message)
    if finish is not None:
        return Judgement(outcomes, finish)
    return Judgement(outcomes, None, tuple(wanted), ends)


def _outcome(
    job: MLJob,
    framework: Framework,
    replica: Replica,
    seen: Seen,
    failures: list[tuple[Replica, str]],
    wanted: list[Restart],
    elastic_role: str | None = None,
) -> Outcome:
    """One replica's outcome for the success rule; an exit adds a failure or a restart.

    A replica of an elastic job's elastic role is never a failure of the job: whatever its exit, and whatever its
    restart policy, it is replaced (recreated), counted against backoffLimit like any restart; the others carry
    on, and torchrun's agents re-form the group with and then without it."""
    if seen.state is not State.EXITED:
        return {State.RUNNING: Outcome.RUNNING, State.SUCCEEDED: Outcome.SUCCEEDED}.get(seen.state, Outcome.PENDING)
    stop = seen.stop or Stop()
    result = verdict(restart_policy(job, framework, replica.role), stop)
    if result is Verdict.SUCCEEDED:
        return Outcome.SUCCEEDED
    if result is Verdict.FAILED and replica.role != elastic_role:
        failures.append((replica, stop.describe(replica)))
        return Outcome.FAILED
    if result is Verdict.FAILED:
        wanted.append(Restart(replica, f"{stop.describe(replica)} (elastic: replaced)", seen.counted))
        return Outcome.PENDING
    wanted.append(Restart(replica, stop.describe(replica), seen.counted))
    return Outcome.PENDING


def _finish(
    job: MLJob,
    framework: Framework,
    outcomes: Mapping[Replica, Outcome],
    failures: Sequence[tuple[Replica, str]],
    wanted: Sequence[Restart],
    restarts: int,
    restarted: Sequence[str],
    started: datetime | None,
    ends: datetime | None,
    now: datetime,
) -> Finish | None:
    """Rules 1-4 of the precedence: whether the job ends now, and how."""
    try:
        succeeded = framework.succeeded(job, outcomes)
    except Exception as error:
        return Finish(False, PLUGIN_ERROR, str(PluginError(framework.name, "succeeded", error)))
    if succeeded:
        return Finish(True, SUCCEEDED, SUCCEEDED_MESSAGE)
    if failures:
        # A role that runs until stopped never exits because a peer did, so its failure is a cause, not a
        # consequence: named first (an MPI worker that died, not the launcher whose mpirun then lost it).
        first = min(failures, key=lambda f: not _runs_until_stopped(framework, f[0]))[1]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return Finish(False, REPLICA_FAILED, first + more)
    if not wanted and all(o is Outcome.SUCCEEDED for o in outcomes.values()):
        message = f"every replica has finished but the {framework.name} success rule is not met"
        return Finish(False, REPLICA_FAILED, message)
    limit = job.spec.run_policy.backoff_limit
    fresh = [r for r in wanted if not r.counted]
    if restarts + len(fresh) > limit:
        why = restarted[0] if restarted else "too many restarts"
        return Finish(False, BACKOFF_LIMIT_EXCEEDED, f"{why}; backoffLimit {limit} reached")
    if ends is not None and now >= ends:
        assert started is not None
        seconds = job.spec.run_policy.active_deadline_seconds
        message = f"activeDeadlineSeconds ({seconds}s) passed since startTime {format_time(started)}"
        return Finish(False, DEADLINE_EXCEEDED, message)
    return None


def _runs_until_stopped(framework: Framework, replica: Replica) -> bool:
    role = framework.role(replica.role)
    return role is not None and role.runs_until_stopped
