"""The decision core of a run: from what is observed now to what to do next.

A pure function, :func:`decide`, maps (job, framework, observed replicas, restart count, times)
to a :class:`Decision`: start, restart or stop replicas, finish the job, and when to look again.
It is level-triggered like the reconciler: call it after every change (a process exited, the
deadline came) and apply what it returns. It spawns nothing and reads no clock, so every rule —
restart policy, ``backoffLimit``, ``activeDeadlineSeconds``, the framework's success rule — is
tested with plain tables, and the operator can feed it pod states to get the same answers.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from mljob.api import MLJob, RestartPolicy
from mljob.framework import Framework, Outcome, Replica
from mljob.render import restart_policy

SUCCEEDED = "Succeeded"
REPLICA_FAILED = "ReplicaFailed"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"

SUCCESS_LINGER_SECONDS = 2.0
"""How long a replica that does not run until stopped may take to exit after the job succeeded."""


class State(StrEnum):
    """Where one replica's process stands."""

    PENDING = "Pending"
    """Not started yet."""
    RUNNING = "Running"
    EXITED = "Exited"
    """Exited and not restarted (yet): :attr:`Observed.exit_code` says how."""


@dataclass(frozen=True)
class Observed:
    """What is known about one replica right now."""

    state: State = State.PENDING
    exit_code: int | None = None
    """The exit status; negative when killed by a signal (``-9``), as Python reports it."""


class Verdict(StrEnum):
    """What an exit means under a restart policy."""

    SUCCEEDED = "succeeded"
    RESTART = "restart"
    FAILED = "failed"


def verdict(policy: RestartPolicy, exit_code: int) -> Verdict:
    """The kubelet's and the operator's rule for one exit.

    ``Always`` restarts on every exit, success included, as a pod with ``restartPolicy: Always``
    does. ``ExitCode`` treats 1-127 as the program's own, permanent failure and 128+ (or a
    negative code: killed by a signal) as something done to it, worth retrying.
    """
    if policy is RestartPolicy.ALWAYS:
        return Verdict.RESTART
    if exit_code == 0:
        return Verdict.SUCCEEDED
    if policy is RestartPolicy.ON_FAILURE:
        return Verdict.RESTART
    if policy is RestartPolicy.EXIT_CODE and (exit_code < 0 or exit_code >= 128):
        return Verdict.RESTART
    return Verdict.FAILED


def describe_exit(replica: Replica, exit_code: int) -> str:
    """``worker-1 exited with code 1`` or ``worker-1 was killed by SIGKILL``: what a person reads."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"{replica} was killed by {name}"
    return f"{replica} exited with code {exit_code}"


@dataclass(frozen=True)
class Start:
    """Start a replica for the first time."""

    replica: Replica


@dataclass(frozen=True)
class Restart:
    """Start a replica again after an exit; counts against ``backoffLimit``."""

    replica: Replica
    exit_code: int


@dataclass(frozen=True)
class Stop:
    """Stop a running replica: the job is over.

    ``linger`` seconds first let a replica that is finishing anyway exit on its own: after the
    success rule is met (a PyTorch master exited 0) the workers are usually a moment from exiting
    0 too, and a person should read "succeeded", not "stopped". Roles that run until stopped,
    and every replica of a failed job, get none.
    """

    replica: Replica
    linger: float = 0.0


@dataclass(frozen=True)
class Finish:
    """The job reached a terminal phase."""

    succeeded: bool
    reason: str
    message: str


Action = Start | Restart | Stop | Finish


@dataclass(frozen=True)
class Decision:
    """What to do now, and when to decide again if nothing else happens first."""

    actions: tuple[Action, ...] = ()
    wake_at: float | None = None

    @property
    def finish(self) -> Finish | None:
        return next((a for a in self.actions if isinstance(a, Finish)), None)


def decide(
    job: MLJob,
    framework: Framework,
    observed: Mapping[Replica, Observed],
    restarts: int,
    started_at: float,
    now: float,
) -> Decision:
    """The next actions for a job that has not finished yet.

    ``observed`` holds every replica of the job; ``restarts`` is the count so far, across the
    job; ``started_at`` and ``now`` are seconds on one clock. Rules, in order: the deadline; a
    permanent failure; the framework's success rule (a replica about to restart counts as
    running, so a parameter server that exits after the chief succeeded is not restarted);
    ``backoffLimit``; then restarts and first starts. Finishing stops every replica still running.
    """
    run_policy = job.spec.run_policy
    deadline = started_at + run_policy.active_deadline_seconds if run_policy.active_deadline_seconds else None
    if deadline is not None and now >= deadline:
        message = f"deadline exceeded (activeDeadlineSeconds {run_policy.active_deadline_seconds})"
        return _finish(observed, Finish(False, DEADLINE_EXCEEDED, message))

    needs_restart: list[tuple[Replica, int, RestartPolicy]] = []
    outcomes: dict[Replica, Outcome] = {}
    for replica, seen in observed.items():
        if seen.state is not State.EXITED or seen.exit_code is None:
            outcomes[replica] = Outcome.RUNNING if seen.state is State.RUNNING else Outcome.PENDING
            continue
        policy = restart_policy(job, framework, replica.role)
        result = verdict(policy, seen.exit_code)
        if result is Verdict.FAILED:
            message = f"{describe_exit(replica, seen.exit_code)} (restartPolicy {policy.value})"
            return _finish(observed, Finish(False, REPLICA_FAILED, message))
        if result is Verdict.RESTART:
            needs_restart.append((replica, seen.exit_code, policy))
            outcomes[replica] = Outcome.RUNNING
        else:
            outcomes[replica] = Outcome.SUCCEEDED

    if framework.succeeded(job, outcomes):
        return _finish(observed, Finish(True, SUCCEEDED, "job succeeded"), framework)
    if not needs_restart and all(seen.state is State.EXITED for seen in observed.values()):
        message = f"every replica has exited but the {framework.name} success rule is not met"
        return _finish(observed, Finish(False, REPLICA_FAILED, message))

    if needs_restart and restarts + len(needs_restart) > run_policy.backoff_limit:
        replica, exit_code, policy = needs_restart[0]
        message = (
            f"backoff limit reached ({restarts} restart{'' if restarts == 1 else 's'}, "
            f"backoffLimit {run_policy.backoff_limit}); "
            f"last: {describe_exit(replica, exit_code)} (restartPolicy {policy.value})"
        )
        return _finish(observed, Finish(False, BACKOFF_LIMIT_EXCEEDED, message))

    starts = [Start(r) for r, seen in observed.items() if seen.state is State.PENDING]
    restart_actions = [Restart(r, code) for r, code, _ in needs_restart]
    return Decision((*starts, *restart_actions), wake_at=deadline)


def _finish(observed: Mapping[Replica, Observed], finish: Finish, framework: Framework | None = None) -> Decision:
    """Stop what runs, then finish; on success (``framework`` given) finishing replicas may linger."""
    stops = []
    for replica, seen in observed.items():
        if seen.state is State.RUNNING:
            role = framework.role(replica.role) if framework is not None else None
            linger = SUCCESS_LINGER_SECONDS if role is not None and not role.runs_until_stopped else 0.0
            stops.append(Stop(replica, linger))
    return Decision((*stops, finish))
