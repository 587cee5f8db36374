"""PyTorch for mljob: the variables Kubeflow's PyTorchJob (training-operator v1) sets, same values.

Kubeflow's wiring (``pkg/controller.v1/pytorch/envvar.go`` ``setPodEnv``, ``master.go``):
``MASTER_PORT``/``PET_MASTER_PORT`` and ``MASTER_ADDR``/``PET_MASTER_ADDR`` name master 0;
``RANK`` and ``PET_NODE_RANK`` are 0 for the master and i+1 for worker i; ``PET_NNODES`` counts the
pods; ``PET_NPROC_PER_NODE`` is ``nprocPerNode`` verbatim (default ``"auto"``); ``WORLD_SIZE`` is
pods times ``nprocPerNode`` when that is an integer, else pods (``getNprocPerNodeInt`` returns 1).

Where mljob differs: a job without a Master is wired too (Kubeflow then sets only
``PET_NNODES``): worker 0 coordinates and worker i has rank i, so ``torchrun`` and plain
``init_process_group`` work either way. ``PYTHONUNBUFFERED`` is ``"1"`` (Kubeflow writes ``"0"``,
which Python also reads as "unbuffered": any non-empty value counts). Elastic training
(``elasticPolicy``, ``PET_RDZV_*``) is not offered.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from mljob import Cluster, Framework, MLJob, Outcome, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = ["PyTorch", "PyTorchOptions", "mljob_register_frameworks"]

NPROC_WORDS = ("auto", "cpu", "gpu")
"""torchrun's symbolic ``--nproc-per-node`` values: one process per GPU (or CPU) it finds."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class PyTorchOptions(BaseModel):
    """``spec.frameworkOptions`` of a PyTorch job."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    nproc_per_node: Literal["auto", "cpu", "gpu"] | int = Field(
        "auto",
        alias="nprocPerNode",
        description=(
            'Processes per pod, as Kubeflow\'s PyTorchJob nprocPerNode: "auto", "cpu", "gpu" or a positive '
            "integer. Becomes PET_NPROC_PER_NODE; an integer also multiplies WORLD_SIZE."
        ),
    )

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _nproc(cls, value: Any) -> str | int:
        """Accept ``4`` and ``"4"`` alike (Kubeflow's field is a string); name the allowed values."""
        if isinstance(value, str) and value in NPROC_WORDS:
            return value
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        message = f'must be "auto", "cpu", "gpu" or a positive integer, got {value!r}'
        raise PydanticCustomError("nproc_per_node", message.replace("{", "{{").replace("}", "}}"))


class PyTorch(Framework):
    """Master and Worker, wired for ``torch.distributed`` and ``torchrun``."""

    name = "pytorch"
    roles = (
        Role("Master", default_port=23456, leader=True, max_replicas=1),
        Role("Worker", default_port=23456),
    )
    default_restart_policy = RestartPolicy.ON_FAILURE  # Kubeflow's PytorchJobDefaultRestartPolicy
    options_model = PyTorchOptions
    reserved_env = frozenset(
        {
            "PYTHONUNBUFFERED",
            "MASTER_PORT",
            "PET_MASTER_PORT",
            "MASTER_ADDR",
            "PET_MASTER_ADDR",
            "WORLD_SIZE",
            "RANK",
            "PET_NPROC_PER_NODE",
            "PET_NODE_RANK",
            "PET_NNODES",
        }
    )
    port_name = "pytorchjob-port"
    version = _version()

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Kubeflow's rule, a Master has exactly one replica; and someone to be rank 0."""
        specs = job.spec.replica_specs
        if "Master" in specs and specs["Master"].replicas != 1:
            return [
                Problem(
                    "spec.replicaSpecs.Master.replicas",
                    f"a Master has exactly 1 replica, got {specs['Master'].replicas}; "
                    "leave Master out to let worker 0 coordinate",
                )
            ]
        if "Master" not in specs and not (specs["Worker"].replicas if "Worker" in specs else 0):
            return [Problem("spec.replicaSpecs.Worker.replicas", "a PyTorch job without a Master needs a Worker")]
        return ()

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """Master 0 coordinates; without a Master, worker 0 does."""
        return replica == _coordinator(job)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        coordinator = _coordinator(job)
        master = cluster.address(coordinator)
        rank = replica.index + 1 if replica.role == "Worker" and coordinator.role == "Master" else replica.index
        nodes = sum(spec.replicas for spec in job.spec.replica_specs.values())
        nproc = PyTorchOptions.model_validate(job.spec.framework_options).nproc_per_node
        world_size = nodes * nproc if isinstance(nproc, int) else nodes
        # Kubeflow's order, so `kubectl describe pod` reads the same after a migration.
        return {
            "PYTHONUNBUFFERED": "1",
            "MASTER_PORT": str(master.port),
            "PET_MASTER_PORT": str(master.port),
            "MASTER_ADDR": master.host,
            "PET_MASTER_ADDR": master.host,
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "PET_NPROC_PER_NODE": str(nproc),
            "PET_NODE_RANK": str(rank),
            "PET_NNODES": str(nodes),
        }

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The master succeeded; without one, every worker did."""
        specs = job.spec.replica_specs
        if "Master" in specs:
            return outcomes.get(Replica("Master", 0)) is Outcome.SUCCEEDED
        workers = specs["Worker"].replicas if "Worker" in specs else 0
        return workers > 0 and all(outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in range(workers))


def _coordinator(job: MLJob) -> Replica:
    """Where ``MASTER_ADDR`` points: master 0, or worker 0 in a job without a Master."""
    return Replica("Master", 0) if "Master" in job.spec.replica_specs else Replica("Worker", 0)


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the PyTorch framework to mljob."""
    register(PyTorch())
