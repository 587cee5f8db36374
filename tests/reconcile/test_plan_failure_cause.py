"""Which replica a failed job names when several failed in one look (issue 24).

A role that runs until stopped (an MPI worker's sshd, a TF parameter server) never exits because a peer did, so its
failure is a cause, never a consequence: it is named first. The MPI case, with the real plugin: worker-1 dies, and
its launcher's ``mpirun``, which lost a daemon, exits a moment later; the operator's pass that sees both (its pod
events debounced together) names the worker, not the launcher.
"""

from __future__ import annotations

from jobkit import Toy, World, make_job, s
from mljob_mpi import MPI

from mljob.api import ConditionType, Phase


def running(w: World) -> World:
    w.step()
    for name in list(w.pods):
        w.put(w.update(name.removeprefix(f"{w.job.name}-")).running())
    w.step(s(1))
    assert w.status.phase is Phase.RUNNING
    return w


def mpi() -> World:
    job = make_job("mpi", "mpi").with_replicas("Launcher", 1, "Never").with_replicas("Worker", 2, "Never")
    return running(World(job, MPI()))


def failure(w: World) -> str:
    assert w.status.phase is Phase.FAILED
    found = [c for c in w.status.conditions if c.type is ConditionType.FAILED and c.status == "True"]
    assert len(found) == 1, w.status.conditions
    assert found[0].reason == "ReplicaFailed"
    assert w.status.message == found[0].message
    return found[0].message


def test_a_dead_mpi_worker_is_named_when_it_failed_alone() -> None:
    w = mpi()
    w.put(w.update("worker-1").exited(3))
    w.step(s(2))
    assert failure(w) == "worker-1 exited with code 3 (Error)"


def test_a_dead_mpi_worker_is_named_before_the_launcher_it_took_down() -> None:
    w = mpi()
    w.put(w.update("launcher-0").exited(255), w.update("worker-1").exited(3))
    w.step(s(2))
    assert failure(w) == "worker-1 exited with code 3 (Error) (and 1 more)"


def test_a_launcher_that_failed_alone_is_named() -> None:
    w = mpi()
    w.put(w.update("launcher-0").exited(1))
    w.step(s(2))
    assert failure(w) == "launcher-0 exited with code 1 (Error)"


def test_a_role_that_runs_until_stopped_is_named_first_whatever_its_place() -> None:
    w = World(
        make_job()
        .with_replicas("Master", 1, "Never")
        .with_replicas("Worker", 2, "Never")
        .with_replicas("PS", 1, "Never"),
        Toy(),
    )
    running(w)
    w.put(w.update("master-0").exited(1), w.update("worker-0").exited(1), w.update("ps-0").exited(137))
    w.step(s(2))
    assert failure(w) == "ps-0 exited with code 137 (Error) (and 2 more)"
    # Among the others, replica order as before.
    w = running(World(make_job().with_replicas("Master", 1, "Never").with_replicas("Worker", 2, "Never"), Toy()))
    w.put(w.update("worker-1").exited(2), w.update("master-0").exited(1))
    w.step(s(2))
    assert failure(w) == "master-0 exited with code 1 (Error) (and 1 more)"
