"""Two hundred generated MLJobs through the operator on the real control plane, with random pod outcomes.

Each job's outcome is predicted from its script, under timings chosen so the prediction cannot race: failures
come fast (0.1 s after a run starts), successes slowly (3 s), and at most two failures per replica, so every
restart is counted before anything can succeed. The prediction:

* a replica under ``Never`` that fails: Failed, ReplicaFailed;
* else restarts (in place under OnFailure, by recreation under ExitCode with 137) above backoffLimit: Failed,
  BackoffLimitExceeded;
* else Succeeded, with exactly that many restarts.

Then: no orphan (nothing of the job left running or pending, its service gone unless cleanPodPolicy is None),
and no duplicate (the session's invariant checker, over every pod version the API server committed).
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import E2EJob, Forever, Kube, Role, Run
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.generated.strategies import PLUGINS, replica_specs

BATCH = 25


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    framework = draw(st.sampled_from(sorted(PLUGINS.frameworks)))
    specs = draw(replica_specs(framework, max_per_role=2))
    stopped = {r.name for r in PLUGINS.frameworks[framework].roles if r.runs_until_stopped}
    roles: dict[str, tuple[int, str, int]] = {}  # role -> (replicas, policy, failures per replica)
    for role, spec in specs.items():
        if role in stopped:
            roles[role] = (spec["replicas"], "OnFailure", 0)
            continue
        policy = draw(st.sampled_from(["OnFailure", "Never", "ExitCode"]))
        failures = draw(st.sampled_from([0, 0, 1, 2])) if policy != "Never" else draw(st.sampled_from([0, 0, 0, 1]))
        roles[role] = (spec["replicas"], policy, failures)
    return {
        "framework": framework,
        "roles": roles,
        "stopped": stopped,
        "backoff": draw(st.integers(0, 4)),
        "clean": draw(st.sampled_from(["All", "Running", "None"])),
    }


def job_of(name: str, s: dict[str, Any]) -> E2EJob:
    roles = {}
    for role, (replicas, policy, failures) in s["roles"].items():
        if role in s["stopped"]:
            script: tuple[Run | Forever, ...] = (Forever(),)
        else:
            code = 137 if policy == "ExitCode" else 1
            script = (*(Run(code, 0.1) for _ in range(failures)), Run(0, 3.0))
        roles[role] = Role(replicas, script, policy)
    return E2EJob(name, s["framework"], roles, run_policy={"backoffLimit": s["backoff"], "cleanPodPolicy": s["clean"]})


def predict(s: dict[str, Any]) -> tuple[str, str, int]:
    """(phase, reason, restarts if it succeeds)."""
    working = [(n, p, f) for role, (n, p, f) in s["roles"].items() if role not in s["stopped"] and n]
    if any(p == "Never" and f for n, p, f in working):
        return "Failed", "ReplicaFailed", 0
    restarts = sum(n * f for n, p, f in working)
    if restarts > s["backoff"]:
        return "Failed", "BackoffLimitExceeded", 0
    return "Succeeded", "Succeeded", restarts


def reason(status: dict[str, Any]) -> str:
    terminal = [c for c in status.get("conditions") or () if c["type"] in ("Succeeded", "Failed")]
    return str(terminal[0]["reason"]) if terminal else ""


def left_over(b: Kube, name: str, clean: str) -> list[str]:
    """What of a finished job still holds resources: live pods, and its service unless cleanPodPolicy None."""
    pods = [
        n for n, p in b.pods(name).items()
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") in ("Pending", "Running")
    ]  # fmt: skip
    service = [] if clean == "None" or b.get("services", name) is None else [f"service {name}"]
    return pods + service


@pytest.mark.slow
@settings(
    max_examples=1,
    derandomize=True,  # the same 200 jobs every run: a failure is reproduced, not lost
    phases=[Phase.generate],  # no shrinking: each attempt is minutes of real control plane
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.lists(scenarios(), min_size=200, max_size=200))
def test_two_hundred_generated_jobs_end_as_predicted_with_no_orphan_and_no_duplicate(world, cases):
    w = world(operator=True)
    b = w.kube
    wrong: list[str] = []
    for start in range(0, len(cases), BATCH):
        batch = {f"g{start + i}": s for i, s in enumerate(cases[start : start + BATCH])}
        for name, s in batch.items():
            b.submit(job_of(name, s))
        for name, s in batch.items():
            status = b.wait_phase(name, "Succeeded", "Failed", timeout=180)
            phase, why, restarts = predict(s)
            got = (status["phase"], reason(status))
            if got != (phase, why) or (phase == "Succeeded" and status.get("restartCount", 0) != restarts):
                wrong.append(f"{name} {s}: expected {phase}/{why}/{restarts}, got {got}/{status.get('restartCount')}")
        for name, s in batch.items():
            b.wait(lambda: not left_over(b, name, s["clean"]), what=f"{name} to leave nothing running")  # noqa: B023
    assert not wrong, "\n".join(wrong)
