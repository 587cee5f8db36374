"""Restart policies and backoffLimit, end to end; the eviction and node-loss cases need the emulator."""

from __future__ import annotations

import pytest
from harness import Backend, E2EJob, Forever, Role, Run, conditions

FAST = Run(0, after=0.3)


def test_on_failure_restarts_in_place_and_counts(backend: Backend):
    name = "rs-onfailure"
    backend.submit(
        E2EJob(name, "pytorch", {"Master": Role(1, (Run(0, 1.0),)), "Worker": Role(2, (Run(1), FAST), "OnFailure")})
    )
    status = backend.wait_phase(name, "Succeeded", "Failed", timeout=backend.timeout * 3)
    assert status["phase"] == "Succeeded", status
    assert status["restartCount"] == 2
    assert status["replicaStatuses"]["Worker"]["restarts"] == 2
    assert status["replicaStatuses"]["Master"]["restarts"] == 0
    assert len(backend.events(name, "Restarted")) == 2


def test_always_restarts_in_place_even_after_a_clean_exit_and_counts(backend: Backend):
    """Under Always the kubelet restarts a container that exited 0 too; each restart counts all the same."""
    name = "rs-always"
    backend.submit(
        E2EJob(name, "pytorch", {"Master": Role(1, (Run(0, 2.0),)), "Worker": Role(2, (FAST, Forever()), "Always")})
    )
    status = backend.wait_phase(name, "Succeeded", "Failed", timeout=backend.timeout * 3)
    assert status["phase"] == "Succeeded", status  # the master's success ends it (the PyTorch rule)
    assert status["restartCount"] == 2
    assert status["replicaStatuses"]["Worker"]["restarts"] == 2
    assert status["replicaStatuses"]["Master"]["restarts"] == 0
    restarted = backend.messages(name, "Restarted", "worker-0 exited with code 0", "worker-1 exited with code 0")
    assert len(restarted) == 2, restarted
    assert all("restarted in place" in m for m in restarted), restarted
    # The workers never finish on their own: cleanPodPolicy Running stops them.
    backend.wait(lambda: backend.pod_names(name) == [f"{name}-master-0"], what="running workers cleaned up")


def test_never_fails_the_job_and_names_the_replica(backend: Backend):
    name = "rs-never"
    backend.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Run(3),), "Never")}))
    status = backend.wait_phase(name, "Failed", "Succeeded")
    assert conditions(status)["Failed"] == ("True", "ReplicaFailed")
    assert status["message"].startswith("worker-")
    assert "exited with code 3 (Error)" in status["message"]
    assert status["restartCount"] == 0
    backend.wait(lambda: f"{name}-master-0" not in backend.pod_names(name), what="running master cleaned up")


def test_exit_code_fails_on_a_permanent_code(backend: Backend):
    name = "rs-exitcode-1"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Run(1),), "ExitCode")}))
    status = backend.wait_phase(name, "Failed", "Succeeded")
    assert status["message"] == "worker-0 exited with code 1 (Error)"
    assert status["restartCount"] == 0


def test_exit_code_recreates_on_a_signal_until_the_backoff_limit(backend: Backend):
    name = "rs-exitcode-137"
    backend.submit(
        E2EJob(name, "pytorch", {"Worker": Role(1, (Run(137, 0.2),), "ExitCode")}, run_policy={"backoffLimit": 2})
    )
    status = backend.wait_phase(name, "Failed", "Succeeded", timeout=backend.timeout * 2)
    assert conditions(status)["Failed"] == ("True", "BackoffLimitExceeded")
    assert status["restartCount"] == 2
    assert "worker-0 exited with code 137" in status["message"]
    assert "backoffLimit 2 reached" in status["message"]
    assert len(backend.events(name, "Restarted")) == 2
    # Every recreation is a delete and a create, each one an Event on the job.
    deletes = [e["message"] for e in backend.events(name, "Deleted")]
    assert len([m for m in deletes if "recreating the pod" in m and f"pod {name}-worker-0" in m]) == 2, deletes
    creates = [e["message"] for e in backend.events(name, "Created") if f"pod {name}-worker-0" in e["message"]]
    assert len(creates) == 3, creates
    assert backend.messages(name, "BackoffLimitExceeded") == [status["message"]]


def test_in_place_restarts_exhaust_the_backoff_limit(backend: Backend):
    name = "rs-backoff"
    backend.submit(
        E2EJob(name, "pytorch", {"Worker": Role(1, (Run(2, 0.1),), "OnFailure")}, run_policy={"backoffLimit": 2})
    )
    status = backend.wait_phase(name, "Failed", "Succeeded", timeout=backend.timeout * 4)
    assert conditions(status)["Failed"] == ("True", "BackoffLimitExceeded")
    assert status["restartCount"] >= 3
    assert status["message"].startswith("worker-0 exited with code 2 (Error)")


# --- the emulator can do what a test cannot ask of a real cluster ------------------------------------


def recreated_once(world, pattern: str) -> None:
    """The first incarnation of each matching pod exits 137, later ones succeed (a kubelet-side script)."""
    import fnmatch

    from mljob.testing import Exit

    seen: set[str] = set()

    def first(pod) -> bool:
        name = pod["metadata"]["name"]
        if not fnmatch.fnmatchcase(name, pattern) or name in seen:
            return False
        seen.add(name)
        return True

    world.on_loop(world.kubelet.script, pattern, Exit(0, 0.3))
    world.on_loop(world.kubelet.script, first, Exit(137, 0.2, "OOMKilled"))


def test_exit_code_recreation_then_success(shared_world):
    backend = shared_world.backend
    name = "rs-exitcode-ok"
    recreated_once(shared_world, f"{name}-worker-*")
    backend.create("mljobs", E2EJob(name, "pytorch", {"Worker": Role(2, policy="ExitCode")}).body("default"))
    status = backend.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["restartCount"] == 2
    messages = [e["message"] for e in backend.events(name, "Restarted")]
    assert sorted(m.split(";")[0] for m in messages) == [
        "worker-0 exited with code 137 (OOMKilled)",
        "worker-1 exited with code 137 (OOMKilled)",
    ]


@pytest.mark.parametrize("policy", ["OnFailure", "ExitCode"])
def test_an_evicted_pod_is_recreated_and_counted(shared_world, policy):
    backend = shared_world.backend
    name = f"rs-evict-{policy.lower()}"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),), policy)}))
    backend.wait_phase(name, "Running")
    old_uid = backend.pods(name)[f"{name}-worker-1"]["metadata"]["uid"]
    shared_world.on_loop(shared_world.kubelet.evict, f"{name}-worker-1")
    backend.wait(
        lambda: backend.status(name).get("restartCount") == 1 and backend.phase(name) == "Running",
        what="recreated and running again",
    )
    pod = backend.pods(name)[f"{name}-worker-1"]
    assert pod["metadata"]["uid"] != old_uid
    assert "was evicted" in backend.status(name)["message"]


def test_a_pod_on_a_lost_node_is_deleted_and_its_name_waited_for(shared_world):
    """Deleting a pod on a lost node never completes: the operator must not create a second one."""
    backend = shared_world.backend
    name = "rs-lost"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),), "ExitCode")}))
    backend.wait_phase(name, "Running")
    shared_world.on_loop(shared_world.kubelet.lose_node, f"{name}-worker-0")
    backend.wait(lambda: backend.phase(name) == "Restarting", what="Restarting")
    backend.wait(lambda: backend.pods(name)[f"{name}-worker-0"]["metadata"].get("deletionTimestamp"), what="deleted")
    status = backend.status(name)
    assert status["restartCount"] == 1
    assert "worker-0 lost its node (NodeLost)" in status["message"]
    assert len(backend.pods(name)) == 2  # the lost pod, still terminating, and worker-1: no duplicate


def test_never_yields_to_the_framework_success_rule(world):
    """A worker fails under Never in the same pass in which the chief succeeds: TF's rule says success.

    The operator is stopped while both happen, so its next pass sees both at once, deterministically.
    """
    w = world()
    b = w.backend
    name = "rs-never-chief"
    b.submit(E2EJob(name, "tensorflow", {"Chief": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),), "Never")}))
    b.wait_phase(name, "Running")
    w.operator.kill()
    w.on_loop(w.kubelet.exit, f"{name}-worker-1", 1)
    w.on_loop(w.kubelet.exit, f"{name}-chief-0", 0)
    b.wait(lambda: b.pods(name)[f"{name}-chief-0"]["status"].get("phase") == "Succeeded", what="chief done")
    w.operator.start()
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["replicaStatuses"]["Worker"]["failed"] == 1
    assert not b.events(name, "ReplicaFailed")
