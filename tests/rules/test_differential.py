"""The operator's planner and ``mljob run`` decide a job's fate the same way: one scenario, two front ends.

Each generated scenario is a job of one of the five framework plugins (roles and replica counts, a restart
policy per role, backoffLimit, activeDeadlineSeconds), the restarts it has had, how long it has run, and what
each replica did just now: not started, running, or exited with a code (a signal's 128+N included). The same
scenario goes to the operator's planner as pods (an exit under ``OnFailure``/``Always`` is the kubelet's
in-place restart, under ``Never``/``ExitCode`` a finished pod) and to the local runtime's decision as
processes. Both must end the job, or not, with the same phase, reason and message, and retry the same
replicas. A third copy of a rule in either front end shows up here as a difference.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mljob.api import MLJob
from mljob.core.reconcile import desire, plan
from mljob.core.status import LEDGER_ANNOTATION
from mljob.core.validation import check_job
from mljob.framework import Framework, Replica, replicas_of
from mljob.local.policy import Observed, Restart, State, decide
from mljob.plugins import Plugins, load_plugins

FRAMEWORKS = ("pytorch", "tensorflow", "mxnet", "jax", "xgboost")
POLICIES = (None, "Never", "OnFailure", "ExitCode", "Always")
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "11111111-2222-3333-4444-555555555555"


@cache
def plugins() -> Plugins:
    found = load_plugins()
    missing = [name for name in FRAMEWORKS if found.framework(name) is None]
    assert not missing, f"framework plugins not installed: {missing} (make setup installs them)"
    return found


@dataclass(frozen=True)
class Exit:
    """A replica's process ended: ``code`` as the kubelet reports it, or killed by ``signal``."""

    code: int = 0
    signal: int | None = None

    @property
    def returncode(self) -> int:
        """As Python reports it to the local runtime."""
        return -self.signal if self.signal is not None else self.code

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal is not None else self.code

    @property
    def reason(self) -> str:
        """The terminated reason the pod carries: what the local runtime can know too (a signal's name)."""
        return signal.Signals(self.signal).name if self.signal is not None else ""


Now = str | Exit
""""pending" (not started), "running", or how it exited just now."""


@dataclass(frozen=True)
class Scenario:
    job: MLJob
    framework: Framework
    restarts: int
    elapsed: float
    now: dict[Replica, Now]


EXITS = st.one_of(
    st.builds(Exit, st.sampled_from((0, 0, 1, 2, 127, 128, 255))),
    st.builds(Exit, signal=st.sampled_from((signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV))),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    framework = plugins().framework(draw(st.sampled_from(FRAMEWORKS)))
    assert framework is not None
    container = {"name": framework.container_name, "image": "busybox", "command": ["true"]}
    specs: dict[str, Any] = {}
    for role in framework.roles:
        most = min(role.max_replicas or 3, 3)
        count = draw(st.integers(role.min_replicas, most))
        if count:
            spec: dict[str, Any] = {"replicas": count, "template": {"spec": {"containers": [container]}}}
            policy = draw(st.sampled_from(POLICIES))
            if policy:
                spec["restartPolicy"] = policy
            specs[role.name] = spec
    assume(specs)
    run_policy: dict[str, Any] = {"backoffLimit": draw(st.integers(0, 3))}
    deadline = draw(st.one_of(st.none(), st.integers(10, 100)))
    if deadline is not None:
        run_policy["activeDeadlineSeconds"] = deadline
    body = {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "job", "namespace": "default", "uid": UID, "generation": 1, "resourceVersion": "1"},
        "spec": {"framework": framework.name, "replicaSpecs": specs, "runPolicy": run_policy},
    }
    job = MLJob.model_validate(body)
    assume(not check_job(job, plugins()).problems)
    now = {r: draw(st.one_of(st.sampled_from(("pending", "running")), EXITS)) for r in replicas_of(job)}
    restarts = draw(st.integers(0, 3))
    return Scenario(job, framework, restarts, draw(st.sampled_from((0.0, 5.0, 99.0, 150.0))), now)


# --- the operator's side: pods, as the watch stream would show them ------------------------------------------


def pod_policy(job: MLJob, framework: Framework, replica: Replica) -> str:
    """The restart policy of ``replica`` as the job says it (the framework's default where it says none)."""
    chosen = job.spec.replica_specs[replica.role].restart_policy
    return (chosen or framework.default_restart_policy).value


def pod_status(now: Now, policy: str, container: str) -> dict[str, Any]:
    """What the kubelet reports for a replica that is ``now``: an exit under OnFailure/Always it restarted."""
    if now == "pending":
        return {"phase": "Pending"}
    if now == "running":
        return {"phase": "Running", "containerStatuses": [{"name": container, "state": {"running": {}}}]}
    assert isinstance(now, Exit)
    terminated: dict[str, Any] = {"exitCode": now.exit_code}
    if now.reason:
        terminated["reason"] = now.reason
    in_place = policy == "Always" or (policy == "OnFailure" and now.exit_code != 0)
    if in_place:
        last = {"terminated": terminated}
        status = {"name": container, "state": {"running": {}}, "restartCount": 1, "lastState": last}
        return {"phase": "Running", "containerStatuses": [status]}
    phase = "Succeeded" if now.exit_code == 0 else "Failed"
    return {"phase": phase, "containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}


def operator_side(s: Scenario) -> tuple[tuple[str, str, str] | None, set[str], datetime | None]:
    """(phase, reason, message) if the planner ends the job, the replicas it restarts, when it looks again."""
    body = s.job.model_dump(mode="json", by_alias=True, exclude_none=True)
    first = replicas_of(s.job)[0].role
    ledger = {"spec": "", "restarts": {first: s.restarts} if s.restarts else {}, "pods": {}}
    body["metadata"]["annotations"] = {LEDGER_ANNOTATION: json.dumps(ledger)}
    stamp = T0.strftime("%Y-%m-%dT%H:%M:%SZ")
    created = {"type": "Created", "status": "True", "reason": "Created", "lastTransitionTime": stamp}
    body["status"] = {"startTime": stamp, "conditions": [created], "restartCount": s.restarts}
    job = MLJob.model_validate(body)
    desired = desire(job, plugins())
    assert desired.ok, desired.problems
    pods = []
    for i, (replica, rendered) in enumerate(zip(replicas_of(job), desired.pods, strict=True)):
        pod = json.loads(json.dumps(rendered))
        pod["metadata"]["uid"] = f"pod-{i}"
        pod["status"] = pod_status(s.now[replica], pod_policy(job, s.framework, replica), s.framework.container_name)
        pods.append(pod)
    result = plan(job, desired, pods, None, T0 + timedelta(seconds=s.elapsed))
    retried = {e.message.split(" ")[0] for e in result.events if e.reason == "Restarted"}
    if result.finished is None:
        return None, retried, result.wake_at
    status = result.status or {}
    ended = next(c for c in status["conditions"] if c["type"] in ("Succeeded", "Failed") and c["status"] == "True")
    return (ended["type"], ended["reason"], status["message"]), retried, None


# --- the local runtime's side: processes ------------------------------------------------------------------------


def local_side(s: Scenario) -> tuple[tuple[str, str, str] | None, set[str], datetime | None]:
    observed = {}
    for replica, now in s.now.items():
        if now == "pending":
            observed[replica] = Observed(State.PENDING)
        elif now == "running":
            observed[replica] = Observed(State.RUNNING)
        else:
            assert isinstance(now, Exit)
            observed[replica] = Observed(State.EXITED, now.returncode)
    decision = decide(s.job, s.framework, observed, s.restarts, T0, T0 + timedelta(seconds=s.elapsed))
    finish = decision.finish
    retried = {str(a.replica) for a in decision.actions if isinstance(a, Restart)}
    if finish is None:
        return None, retried, decision.wake_at
    return ("Succeeded" if finish.succeeded else "Failed", finish.reason, finish.message), set(), None


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])
@given(scenarios())
def test_the_operator_and_mljob_run_decide_alike(s: Scenario) -> None:
    op_end, op_retried, op_wake = operator_side(s)
    local_end, local_retried, local_wake = local_side(s)
    assert op_end == local_end, {str(r): str(n) for r, n in s.now.items()}
    if op_end is None:
        assert op_retried == local_retried
        assert op_wake == local_wake
