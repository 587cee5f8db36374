"""What a local run does next: the rulebook's judgement, as processes to start, restart and stop.

:func:`decide` maps what is observed of each replica's process to the rulebook's terms
(:mod:`mljob.core.rules`, the operator's too), asks it what happens, and turns the answer into
actions. It keeps no rule of its own: restart policy, ``backoffLimit``, ``activeDeadlineSeconds``
and the framework's success rule are the rulebook's. It spawns nothing and reads no clock, so it
is tested with plain tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from mljob.api import MLJob
from mljob.core import rules
from mljob.core.rules import Finish
from mljob.framework import Framework, Replica

SUCCESS_LINGER_SECONDS = 2.0
"""How long a replica that does not run until stopped may take to exit after the job succeeded."""

__all__ = ["Decision", "Finish", "Observed", "Restart", "Start", "State", "Terminate", "decide", "describe_exit"]


State = rules.State
"""Where a replica's process stands: the rulebook's states; a local process is never SUCCEEDED without an exit."""


@dataclass(frozen=True)
class Observed:
    """What is known about one replica's process right now."""

    state: State = State.PENDING
    exit_code: int | None = None
    """The exit status; negative when killed by a signal (``-9``), as Python reports it."""


def describe_exit(replica: Replica, exit_code: int) -> str:
    """``worker-1 exited with code 1``, ``worker-1 exited with code 137 (SIGKILL)``: the rulebook's wording."""
    return rules.Stop.of_returncode(exit_code).describe(replica)


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
class Terminate:
    """Stop a running replica (SIGTERM, then SIGKILL after its grace): the job is over.

    ``linger`` seconds first let a replica that is finishing anyway exit on its own: after the
    success rule is met (a PyTorch master exited 0) the workers are usually a moment from exiting
    0 too, and a person should read "succeeded", not "stopped". Roles that run until stopped,
    and every replica of a failed job, get none.
    """

    replica: Replica
    linger: float = 0.0


Action = Start | Restart | Terminate | Finish


@dataclass(frozen=True)
class Decision:
    """What to do now, and when to decide again if nothing else happens first."""

    actions: tuple[Action, ...] = ()
    wake_at: datetime | None = None

    @property
    def finish(self) -> Finish | None:
        return next((a for a in self.actions if isinstance(a, Finish)), None)


def seen(observed: Observed) -> rules.Seen:
    """A process as the rulebook reads it."""
    if observed.state is State.EXITED and observed.exit_code is not None:
        return rules.Seen(State.EXITED, rules.Stop.of_returncode(observed.exit_code))
    return rules.Seen(State.RUNNING if observed.state is State.RUNNING else State.PENDING)


def decide(
    job: MLJob,
    framework: Framework,
    observed: Mapping[Replica, Observed],
    restarts: int,
    started: datetime,
    now: datetime,
) -> Decision:
    """The next actions for a job that has not finished yet.

    ``observed`` holds every replica of the job; ``restarts`` is the count so far, across the job.
    Finishing stops every replica still running; otherwise replicas not started yet start and the
    ones the rulebook restarts start again.
    """
    judgement = rules.judge(job, framework, {r: seen(o) for r, o in observed.items()}, restarts, started, now)
    if judgement.finish is not None:
        return _finish(observed, judgement.finish, framework)
    starts = [Start(r) for r, o in observed.items() if o.state is State.PENDING]
    codes = {r: o.exit_code for r, o in observed.items() if o.exit_code is not None}
    again = [Restart(r.replica, codes[r.replica]) for r in judgement.restarts]
    return Decision((*starts, *again), wake_at=judgement.deadline)


def _finish(observed: Mapping[Replica, Observed], finish: Finish, framework: Framework) -> Decision:
    """Stop what runs, then finish; on success, replicas that finish by themselves may linger."""
    stops = []
    for replica, now in observed.items():
        if now.state is State.RUNNING:
            role = framework.role(replica.role) if finish.succeeded else None
            linger = SUCCESS_LINGER_SECONDS if role is not None and not role.runs_until_stopped else 0.0
            stops.append(Terminate(replica, linger))
    return Decision((*stops, finish))
