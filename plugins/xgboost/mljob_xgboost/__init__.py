"""XGBoost for mljob: where the collective's tracker listens, how many workers join, each one's rank.

Distributed XGBoost (``xgboost.collective``) needs a tracker that every worker connects to
first; rank 0 runs it (``xgboost.tracker.RabitTracker``) on its own address and trains too. The
Master is rank 0 and worker i is rank i + 1; in a job without a Master, worker 0 is rank 0 and
worker i is rank i (as Kubeflow Trainer's XGBoost runtime, where node 0 runs the tracker).

The variables carry Kubeflow's names, both generations of them:

- training-operator v1's XGBoostJob (``pkg/controller.v1/xgboost/xgboost.go``, ``SetPodEnv``):
  ``MASTER_PORT``, ``MASTER_ADDR`` (master 0), ``WORLD_SIZE`` (every replica), ``RANK``,
  ``PYTHONUNBUFFERED`` and, when there is more than one replica, ``WORKER_PORT`` (the Worker
  role's port) and ``WORKER_ADDRS`` (the workers' hosts, comma-separated; LightGBM jobs read
  these two); with its roles, default port (9999, container port ``xgboostjob-port``), container
  name (``xgboost``), default restart policy (``Never``), validation (a Master has exactly one
  replica, ``pkg/webhooks/xgboost``) and success rule (the master succeeded).
- Kubeflow Trainer v2's XGBoost runtime (``pkg/runtime/framework/plugins/xgboost/xgboost.go``,
  names in ``pkg/constants``): ``DMLC_TRACKER_URI``, ``DMLC_TRACKER_PORT``, ``DMLC_TASK_ID`` (the
  rank) and ``DMLC_NUM_WORKER`` (the world size), the names of ``xgboost.collective.init``'s
  ``dmlc_*`` arguments.

Where mljob differs: the Master is optional (Kubeflow v1 requires it; without one worker 0
coordinates, and every worker must succeed); ``PYTHONUNBUFFERED`` is ``1`` where v1 writes ``0``
(Python reads any non-empty value as "unbuffered"); ``WORKER_ADDRS`` lists every worker, which is
v1's list whenever v1 accepts the job (it lists ``WORLD_SIZE - 1`` workers, one per worker when
there is one master). Every address is the cluster's: a local run gets ``127.0.0.1`` and each
replica's own port, so there ``WORKER_PORT`` (worker 0's) is not every worker's port.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence

from mljob import Cluster, Framework, MLJob, Outcome, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = ["XGBoost", "mljob_register_frameworks"]

DEFAULT_PORT = 9999
"""training-operator v1's ``XGBoostJobDefaultPort``."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-xgboost")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class XGBoost(Framework):
    """Master and Worker, wired for ``xgboost.collective`` with rank 0 running the tracker."""

    name = "xgboost"
    roles = (
        Role("Master", default_port=DEFAULT_PORT, leader=True, max_replicas=1),
        Role("Worker", default_port=DEFAULT_PORT),
    )
    # The tracker admits each rank once: a restarted worker cannot rejoin a running group.
    # Kubeflow's XGBoostJobDefaultRestartPolicy is Never too.
    default_restart_policy = RestartPolicy.NEVER
    reserved_env = frozenset(
        {
            "MASTER_PORT",
            "MASTER_ADDR",
            "WORLD_SIZE",
            "RANK",
            "PYTHONUNBUFFERED",
            "WORKER_PORT",
            "WORKER_ADDRS",
            "DMLC_TRACKER_URI",
            "DMLC_TRACKER_PORT",
            "DMLC_TASK_ID",
            "DMLC_NUM_WORKER",
        }
    )
    port_name = "xgboostjob-port"
    version = _version()

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Kubeflow's rule, a Master has exactly one replica; and someone to be rank 0."""
        specs = job.spec.replica_specs
        if "Master" in specs and specs["Master"].replicas != 1:
            return [
                Problem(
                    "spec.replicaSpecs.Master.replicas",
                    f"a Master has exactly 1 replica, got {specs['Master'].replicas}; "
                    "leave Master out to let worker 0 run the tracker",
                )
            ]
        if "Master" not in specs and not _workers(job):
            return [Problem("spec.replicaSpecs.Worker.replicas", "an XGBoost job without a Master needs a Worker")]
        return ()

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """Master 0 runs the tracker; without a Master, worker 0 does."""
        return replica == _coordinator(job)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        coordinator = _coordinator(job)
        tracker = cluster.address(coordinator)
        offset = 1 if coordinator.role == "Master" else 0
        rank = str(replica.index + offset if replica.role == "Worker" else 0)
        workers = _workers(job)
        world = str(workers + offset)
        # v1's order first, then Trainer v2's, so `kubectl describe pod` reads as each did.
        env = {
            "MASTER_PORT": str(tracker.port),
            "MASTER_ADDR": tracker.host,
            "WORLD_SIZE": world,
            "RANK": rank,
            "PYTHONUNBUFFERED": "1",
        }
        if workers + offset > 1:
            addresses = [cluster.address(Replica("Worker", i)) for i in range(workers)]
            env["WORKER_PORT"] = str(addresses[0].port)
            env["WORKER_ADDRS"] = ",".join(address.host for address in addresses)
        env.update(
            {
                "DMLC_TRACKER_URI": tracker.host,
                "DMLC_TRACKER_PORT": str(tracker.port),
                "DMLC_TASK_ID": rank,
                "DMLC_NUM_WORKER": world,
            }
        )
        return env

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The master succeeded (Kubeflow's rule); without one, every worker did."""
        if "Master" in job.spec.replica_specs:
            return outcomes.get(Replica("Master", 0)) is Outcome.SUCCEEDED
        workers = _workers(job)
        return workers > 0 and all(outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in range(workers))


def _workers(job: MLJob) -> int:
    spec = job.spec.replica_specs.get("Worker")
    return spec.replicas if spec is not None else 0


def _coordinator(job: MLJob) -> Replica:
    """Who runs the tracker (rank 0): master 0, or worker 0 in a job without a Master."""
    return Replica("Master", 0) if "Master" in job.spec.replica_specs else Replica("Worker", 0)


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the XGBoost framework to mljob."""
    register(XGBoost())
