"""Restart policies and backoffLimit, end to end; evictions and lost nodes are played by kwok on a test's cue."""

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
    (ended,) = backend.messages(name, "BackoffLimitExceeded", f"service {name}")  # with its cleanup
    assert ended.startswith(status["message"]), ended


def test_in_place_restarts_exhaust_the_backoff_limit(backend: Backend):
    name = "rs-backoff"
    backend.submit(
        E2EJob(name, "pytorch", {"Worker": Role(1, (Run(2, 0.1),), "OnFailure")}, run_policy={"backoffLimit": 2})
    )
    status = backend.wait_phase(name, "Failed", "Succeeded", timeout=backend.timeout * 4)
    assert conditions(status)["Failed"] == ("True", "BackoffLimitExceeded")
    assert status["restartCount"] >= 3
    assert status["message"].startswith("worker-0 exited with code 2 (Error)")


# --- kwok's nodes do what a test cannot ask of a real kubelet on cue ------------------------------------------


@pytest.mark.kwok
def test_exit_code_recreation_then_success(backend: Backend):
    """Each worker's first pod is OOMKilled (137): recreated, counted, and the new pods succeed."""
    name = "rs-exitcode-ok"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),), policy="ExitCode")}))
    backend.wait_phase(name, "Running")
    first = {n: p["metadata"]["uid"] for n, p in backend.pods(name).items()}
    for pod in first:
        backend.exit(pod, 137, "OOMKilled")
    backend.wait(lambda: backend.status(name).get("restartCount") == 2, what="both workers recreated")
    backend.wait(
        lambda: (
            all(p["metadata"]["uid"] != first[n] for n, p in backend.pods(name).items())
            and len(backend.pod_names(name)) == 2
        ),
        what="two new pods",
    )
    for pod in first:
        backend.wait(lambda pod=pod: backend.pods(name)[pod]["status"].get("phase") == "Running", what=f"{pod} up")
        backend.exit(pod, 0)
    status = backend.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["restartCount"] == 2
    messages = [e["message"] for e in backend.events(name, "Restarted")]
    assert sorted(m.split(";")[0] for m in messages) == [
        "worker-0 exited with code 137 (OOMKilled)",
        "worker-1 exited with code 137 (OOMKilled)",
    ]


@pytest.mark.kwok
@pytest.mark.parametrize("policy", ["OnFailure", "ExitCode"])
def test_an_evicted_pod_is_recreated_and_counted(backend: Backend, policy):
    name = f"rs-evict-{policy.lower()}"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),), policy)}))
    backend.wait_phase(name, "Running")
    old_uid = backend.pods(name)[f"{name}-worker-1"]["metadata"]["uid"]
    backend.evict(f"{name}-worker-1")
    backend.wait(
        lambda: backend.status(name).get("restartCount") == 1 and backend.phase(name) == "Running",
        what="recreated and running again",
    )
    pod = backend.pods(name)[f"{name}-worker-1"]
    assert pod["metadata"]["uid"] != old_uid
    assert "was evicted" in backend.status(name)["message"]


@pytest.mark.kwok
def test_a_pod_on_a_lost_node_is_deleted_and_its_name_waited_for(backend: Backend):
    """Deleting a pod on a lost node never completes: the operator must not create a second one."""
    name = "rs-lost"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),), "ExitCode")}))
    backend.wait_phase(name, "Running")
    backend.lose_node(f"{name}-worker-0")
    backend.wait(lambda: backend.phase(name) == "Restarting", what="Restarting")
    backend.wait(lambda: backend.pods(name)[f"{name}-worker-0"]["metadata"].get("deletionTimestamp"), what="deleted")
    status = backend.status(name)
    assert status["restartCount"] == 1
    assert "worker-0 lost its node (NodeLost)" in status["message"]
    assert len(backend.pods(name)) == 2  # the lost pod, still terminating, and worker-1: no duplicate
    # What frees the name on a real cluster: someone force-deletes the pod; then the replica comes back.
    backend.core.delete_namespaced_pod(f"{name}-worker-0", backend.namespace, grace_period_seconds=0)
    backend.wait(
        lambda: backend.phase(name) == "Running" and len(backend.pod_names(name)) == 2, what="worker-0 recreated"
    )


def test_never_yields_to_the_framework_success_rule(world):
    """A worker fails under Never in the same pass in which the chief succeeds: TF's rule says success.

    The operator is stopped while both happen, so its next pass sees both at once, deterministically.
    """
    w = world()
    b = w.kube
    name = "rs-never-chief"
    b.submit(E2EJob(name, "tensorflow", {"Chief": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),), "Never")}))
    b.wait_phase(name, "Running")
    w.operator.kill()
    b.exit(f"{name}-worker-1", 1)
    b.exit(f"{name}-chief-0", 0)
    b.wait(lambda: b.pods(name)[f"{name}-chief-0"]["status"].get("phase") == "Succeeded", what="chief done")
    b.wait(lambda: b.pods(name)[f"{name}-worker-1"]["status"].get("phase") == "Failed", what="worker failed")
    w.operator.start()
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["replicaStatuses"]["Worker"]["failed"] == 1
    assert not b.events(name, "ReplicaFailed")
