"""JAX for mljob: what ``jax.distributed.initialize`` needs, in Kubeflow's two formats.

``jax.distributed.initialize(coordinator_address, num_processes, process_id)`` connects one
process per replica to a coordination service that process 0 starts on the coordinator address.
Worker 0 is process 0 and worker i is process i; the coordinator's address and port are worker
0's, as the cluster gives them.

The variables carry Kubeflow's names, both generations of them, so scripts written for either
run unchanged:

- Kubeflow Trainer v2's JAX runtime (``pkg/runtime/framework/plugins/jax/jax.go``,
  ``EnforceMLPolicy``): ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, ``JAX_COORDINATOR_ADDRESS``
  (``host:port``, which ``jax.distributed.initialize()`` also reads by itself),
  ``JAX_COORDINATOR_PORT`` and ``JAX_DISTRIBUTED_BACKEND=gloo``.
- training-operator v1's JAXJob (``pkg/controller.v1/jax/envvar.go``, ``setPodEnv``):
  ``PYTHONUNBUFFERED=1``, ``COORDINATOR_PORT``, ``COORDINATOR_ADDRESS`` (the host alone),
  ``NUM_PROCESSES`` and ``PROCESS_ID``; with its role (``Worker``), default port (6666, container
  port ``jaxjob-port``), container name (``jax``), default restart policy (``Never``) and success
  rule (every worker succeeded).

Where mljob differs: Trainer v2 takes the process id from the Job completion index through the
downward API; mljob writes the number, as v1 does. The address is the cluster's, so a local run
gets ``127.0.0.1`` and worker 0's own free port.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping

from mljob import Cluster, Framework, MLJob, Outcome, Replica, RestartPolicy, Role, hookimpl

__all__ = ["Jax", "mljob_register_frameworks"]

DEFAULT_PORT = 6666
"""training-operator v1's ``JAXJobDefaultPort``."""
BACKEND = "gloo"
"""Trainer v2's ``JAX_DISTRIBUTED_BACKEND``: cross-process collectives on CPU (jax's own default)."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-jax")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class Jax(Framework):
    """Workers only; worker 0 is process 0 and hosts ``jax.distributed``'s coordination service."""

    name = "jax"
    roles = (Role("Worker", default_port=DEFAULT_PORT, leader=True, min_replicas=1),)
    # A jax.distributed group cannot take back one restarted process: the coordination service
    # knows each process id once. Kubeflow's JAXJobDefaultRestartPolicy is Never too.
    default_restart_policy = RestartPolicy.NEVER
    reserved_env = frozenset(
        {
            "PYTHONUNBUFFERED",
            "COORDINATOR_PORT",
            "COORDINATOR_ADDRESS",
            "NUM_PROCESSES",
            "PROCESS_ID",
            "JAX_NUM_PROCESSES",
            "JAX_PROCESS_ID",
            "JAX_COORDINATOR_ADDRESS",
            "JAX_COORDINATOR_PORT",
            "JAX_DISTRIBUTED_BACKEND",
        }
    )
    port_name = "jaxjob-port"
    version = _version()

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        coordinator = cluster.address(Replica("Worker", 0))
        processes = str(_workers(job))
        process_id = str(replica.index)
        # v1's order first, then Trainer v2's, so `kubectl describe pod` reads as each did.
        return {
            "PYTHONUNBUFFERED": "1",
            "COORDINATOR_PORT": str(coordinator.port),
            "COORDINATOR_ADDRESS": coordinator.host,
            "NUM_PROCESSES": processes,
            "PROCESS_ID": process_id,
            "JAX_NUM_PROCESSES": processes,
            "JAX_PROCESS_ID": process_id,
            "JAX_COORDINATOR_ADDRESS": str(coordinator),
            "JAX_COORDINATOR_PORT": str(coordinator.port),
            "JAX_DISTRIBUTED_BACKEND": BACKEND,
        }

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """Every worker succeeded (Kubeflow's JAXJob: no succeeded worker may be missing)."""
        workers = _workers(job)
        return workers > 0 and all(outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in range(workers))


def _workers(job: MLJob) -> int:
    spec = job.spec.replica_specs.get("Worker")
    return spec.replicas if spec is not None else 0


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the JAX framework to mljob."""
    register(Jax())
