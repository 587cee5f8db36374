"""Issue 24: an MPI worker that dies fails the job with that worker named, under the restart rules.

The MPI example's shape (tests/nodeagent/test_cluster_examples.py runs examples/mpi-allreduce so) on the node
agent's real local cluster: a Launcher whose ``mpirun`` reaches two Workers' sshd over the job's SSH key Secret and
hostfile ConfigMap, by their cluster DNS names. Worker 1 dies, deterministically and with no timing in the test:
rank 1, once it runs there, writes ``/flag/die`` into that worker's emptyDir and blocks on a receive nobody sends
(rank 0 waits in an allreduce that needs it); the worker's own command (sshd in the background) waits for that file
and exits 3. Nothing else ends the run: worker-1's PID namespace takes its sshd, orted and rank 1 with it, and the
launcher's ``mpirun``, which lost a daemon, exits non-zero a moment later.

* ``restartPolicy: Never`` on both roles (an MPI world cannot take back one restarted rank): the rulebook fails the
  job at its first look at a failure. The launcher's exit is a consequence, not the cause: the Failed condition
  names worker-1 and its exit code, whether the operator's pass sees the launcher's exit too or not
  (tests/reconcile/test_plan_failure_cause.py has the pass that sees both).
* Both under ``OnFailure`` (the MPI Operator's launcher default) with a backoffLimit: the kubelet restarts worker-1
  in place (same pod, same address; the rank asks only once, by a marker on the host), and the launcher's ``mpirun``
  too, which runs the world again; every restart counts against backoffLimit, and the job recovers, the worker-1
  restart named in its Restarted event.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_operator as on_host
from agentkit import core, local_cluster

from controlplane.cluster import BIN
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "mpi-dies"
DEADLINE = 300.0
"""Seconds from create to Failed or Succeeded: generous for 2 shared cores (these take 2-10 s here)."""
DYING = 1
"""The worker whose rank (rank N runs on worker-N: one slot per worker, the hostfile's order) asks it to die."""
IMAGE = "registry.example.com/mpi4py-train:4.1.2"

RANKS = """\
import os
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
print(f"rank {rank} of {comm.Get_size()} on {MPI.Get_processor_name()}", flush=True)
once = sys.argv[2] if len(sys.argv) > 2 else None  # a marker on the host: ask only the first time


def first() -> bool:
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


if rank == int(sys.argv[1]) and (once is None or first()):
    open("/flag/die", "w").close()  # this worker's own command waits for it, then ends
    comm.recv(source=0)  # nobody sends: only the worker's death ends this run
total = comm.allreduce(rank + 1)  # rank 0 waits here for the dying rank
if rank == 0:
    print(f"RESULT ok allreduce={total}", flush=True)
"""


def worker(end: str) -> str:
    """sshd in the background (the example runs it in the foreground); ``end`` once a rank asks. A container that
    starts again in its pod finds the emptyDir as it was: the request is cleared first."""
    wait = "until [ -e /flag/die ]; do sleep 0.05; done; echo 'worker: asked to die'"
    return f"rm -f /flag/die; mkdir -p /run/sshd && /usr/sbin/sshd -De & {wait}; {end}"


pytestmark = [
    pytest.mark.frameworks,
    pytest.mark.slow,
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Control plane, CoreDNS and two node agents (their test settings), the MLJob CRD."""
    with local_cluster(tmp_path_factory.mktemp("local"), "mpidies", agents=2) as cluster:
        cp = cluster.control_plane
        cp.kubectl("apply", "-k", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd/mljobs.mljob.io", "--timeout=60s")
        yield cluster


@pytest.fixture(scope="module")
def operator(local: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``mljob operator`` for the module's namespace."""
    cp = local.control_plane
    cp.kubectl("create", "namespace", NAMESPACE)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*on_host.MLJOB, "operator", "--namespace", NAMESPACE, "--standalone"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield
    proc.terminate()
    proc.wait(30)
    print(f"----- operator log (tail) -----\n{log.read_text(errors='replace')[-6000:]}")


def mpi_job(
    name: str, folder: Path, end: str, launcher_policy: str, worker_policy: str, backoff: int, once: bool
) -> dict[str, Any]:
    """examples/mpi-allreduce's shape with two workers, the ranks' script in ``folder`` (the launcher's workingDir,
    which mpirun gives the ranks on the workers too: the node agent runs no image, so this machine's files)."""
    (folder / "ranks.py").write_text(RANKS)
    args = [str(DYING), *([str(folder / "died-once")] if once else [])]
    launcher = {
        "name": "mpi",
        "image": IMAGE,
        "command": ["mpirun", "--allow-run-as-root", "-x", "PATH", "-n", "2", "python", "ranks.py", *args],
        "workingDir": str(folder),
    }
    container = {
        "name": "mpi",
        "image": IMAGE,
        "command": ["sh", "-c", worker(end)],
        "volumeMounts": [{"name": "flag", "mountPath": "/flag"}],
    }

    def role(replicas: int, policy: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": policy,
            "template": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [container], **spec}},
        }

    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {
            "framework": "mpi",
            "frameworkOptions": {"slotsPerWorker": 1},
            "replicaSpecs": {
                "Launcher": role(1, launcher_policy, launcher),
                "Worker": role(2, worker_policy, container, volumes=[{"name": "flag", "emptyDir": {}}]),
            },
            "runPolicy": {"backoffLimit": backoff, "activeDeadlineSeconds": int(DEADLINE)},
        },
    }


def run(local: LocalCluster, body: dict[str, Any]) -> dict[str, Any]:
    """Create the job; its status once a Failed or Succeeded condition is True (polled: the test itself waits on
    nothing else)."""
    import kubernetes

    api: Any = kubernetes.client.CustomObjectsApi(core(local.control_plane).api_client)
    name = body["metadata"]["name"]
    api.create_namespaced_custom_object("mljob.io", "v1alpha1", NAMESPACE, "mljobs", body)

    def finished() -> dict[str, Any]:
        job = api.get_namespaced_custom_object("mljob.io", "v1alpha1", NAMESPACE, "mljobs", name)
        status: dict[str, Any] = dict(job.get("status") or {})
        ends = [c for c in status.get("conditions") or () if c["type"] in ("Failed", "Succeeded")]
        return status if any(c["status"] == "True" for c in ends) else {}

    status = until(finished, DEADLINE, f"{name} to finish", interval=0.2)
    pods = local.control_plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"mljob.io/job-name={name}", "-o", "wide")
    print(f"{name}: {status['phase']}: {status.get('message')!r}\n{pods}")
    return status


def events(local: LocalCluster, name: str, reason: str) -> list[str]:
    """The messages of the job's events with ``reason``, oldest first."""
    found = core(local.control_plane).list_namespaced_event(
        NAMESPACE, field_selector=f"involvedObject.name={name},reason={reason}"
    )
    return [e.message for e in sorted(found.items, key=lambda e: e.metadata.creation_timestamp)]


def test_a_dead_worker_fails_the_job_with_the_worker_named(local: LocalCluster, operator: None, tmp_path: Path) -> None:
    name = "mpi-worker-dies"
    status = run(local, mpi_job(name, tmp_path, "exit 3", "Never", "Never", backoff=0, once=False))

    # Failed, not Succeeded, for the replica's own exit (not a budget: backoffLimit, the deadline).
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions.get("Failed", {}).get("status") == "True", status
    assert conditions.get("Succeeded", {}).get("status") != "True", status
    assert status["phase"] == "Failed", status
    failure = conditions["Failed"]
    assert failure["reason"] == "ReplicaFailed", failure
    # The dead worker is the cause, by its replica name and its exit code; the launcher, which lost it, is not.
    assert failure["message"].startswith(f"worker-{DYING} exited with code 3 (Error)"), failure
    assert "launcher" not in failure["message"], failure
    assert status["message"] == failure["message"], status
    finishing = events(local, name, "ReplicaFailed")  # with what the clean-up deleted
    assert len(finishing) == 1, finishing
    assert finishing[0].startswith(failure["message"]), finishing
    assert status["replicaStatuses"]["Worker"]["failed"] == 1, status
    assert status["replicaStatuses"]["Launcher"].get("succeeded", 0) == 0, status
    assert status.get("restartCount", 0) == 0, status
    # It died as its rank asked, so after the launcher's mpirun had reached it; its pod, finished, is kept.
    cp = local.control_plane
    dead = core(cp).read_namespaced_pod(f"{name}-worker-{DYING}", NAMESPACE)
    assert dead.status.phase == "Failed", dead.status
    assert [s.state.terminated.exit_code for s in dead.status.container_statuses] == [3], dead.status
    assert "worker: asked to die" in cp.kubectl("logs", "-n", NAMESPACE, f"{name}-worker-{DYING}")


def test_a_worker_restarted_under_on_failure_counts_against_backoff_and_the_job_recovers(
    local: LocalCluster, operator: None, tmp_path: Path
) -> None:
    name = "mpi-worker-recovers"
    backoff = 10  # worker-1 once, and the launcher's mpirun each time it ended without it (0.5-2 s apart)
    status = run(local, mpi_job(name, tmp_path, "exit 3", "OnFailure", "OnFailure", backoff, once=True))

    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions.get("Succeeded", {}).get("status") == "True", status
    assert conditions.get("Failed", {}).get("status") != "True", status
    assert (tmp_path / "died-once").exists()
    # worker-1 was restarted in place once, for its exit, and named; the launcher's mpirun, which lost it, was
    # restarted in place too and ran the world again; each restart counted against backoffLimit, within it.
    restarted = events(local, name, "Restarted")
    ours = [m for m in restarted if m.startswith(f"worker-{DYING} ")]
    assert len(ours) == 1, restarted
    note = rf"worker-{DYING} exited with code 3 \(Error\); restarted in place \(restart \d+, backoffLimit {backoff}\)"
    assert re.fullmatch(note, ours[0]), ours
    assert not [m for m in restarted if m.startswith("worker-0 ")], restarted
    by_role = {role: s.get("restarts", 0) for role, s in status["replicaStatuses"].items()}
    assert by_role["Worker"] == 1, status
    assert by_role["Launcher"] >= 1, status
    assert status["restartCount"] == by_role["Worker"] + by_role["Launcher"] <= backoff, status
