"""PyTorch for mljob: the variables Kubeflow's PyTorchJob (training-operator v1) sets, same values.

Kubeflow's wiring (``pkg/controller.v1/pytorch/envvar.go`` ``setPodEnv``, ``master.go``):
``MASTER_PORT``/``PET_MASTER_PORT`` and ``MASTER_ADDR``/``PET_MASTER_ADDR`` name master 0;
``RANK`` and ``PET_NODE_RANK`` are 0 for the master and i+1 for worker i; ``PET_NNODES`` counts the
pods; ``PET_NPROC_PER_NODE`` is ``nprocPerNode`` verbatim (default ``"auto"``); ``WORLD_SIZE`` is
pods times ``nprocPerNode`` when that is an integer, else pods (``getNprocPerNodeInt`` returns 1).

Where mljob differs: a job without a Master is wired too (Kubeflow then sets only
``PET_NNODES``): worker 0 coordinates and worker i has rank i, so ``torchrun`` and plain
``init_process_group`` work either way. ``PYTHONUNBUFFERED`` is ``"1"`` (Kubeflow writes ``"0"``,
which Python also reads as "unbuffered": any non-empty value counts).

Elastic training (``frameworkOptions.elasticPolicy``, Kubeflow's ``elasticPolicy`` field for field): the Workers
run ``torchrun``, whose agents meet at a rendezvous, agree on the members and assign every rank themselves, so
the job goes on when a worker is lost and takes new ones in, between ``minReplicas`` and ``maxReplicas``.
The variables are Kubeflow's elastic generator's (``elastic.go``), in its order, for a job of Workers only
(Kubeflow sets no ``MASTER_*``, ``WORLD_SIZE`` or ``RANK`` without a Master either): ``PYTHONUNBUFFERED``,
``PET_NPROC_PER_NODE``, ``PET_RDZV_ENDPOINT`` (``rdzvHost:rdzvPort``, by default worker 0's address and the
Worker port), ``PET_RDZV_BACKEND`` (default ``c10d``), ``PET_NNODES=min:max``, ``PET_MAX_RESTARTS`` (when
set), ``PET_RDZV_ID``, ``PET_RDZV_CONF``, then mljob's ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``. None of them
depends on the Worker count: ``kubectl scale`` changes it under running pods. Bounds default as Kubeflow's
defaulter sets them (``setElasticPolicy``): one given, the other equal to it; neither, both the Worker count (a
job of fixed size that re-forms after a loss; its bounds, and so ``PET_NNODES``, then follow the count).

Where elastic mljob differs from Kubeflow, and why:

- ``PET_RDZV_ID`` defaults to the job's name (Kubeflow leaves torchrun's default ``none``), so two jobs that
  share a rendezvous store never join each other's rendezvous.
- With the default host and the ``c10d`` backend, ``PET_RDZV_CONF`` ends with ``is_host=1`` on worker 0 and
  ``is_host=0`` on the others (unless ``rdzvConf`` sets ``is_host``): torchrun otherwise guesses the store's
  host by comparing the endpoint's name with its own (``_matches_machine_hostname``). An MLJob pod's DNS name
  may not resolve yet when it starts (a wrong guess costs a minute and a restart), and on one machine every
  agent guesses yes, so the first to bind hosts the store and losing that replica stops every other (Kubeflow's
  name ``<job>-worker-0`` happens to be the pod's hostname).
- An elastic job has no Master (a problem, not a wiring): torchrun's rendezvous assigns every rank.
- ``rdzvConf`` entries must be what torchrun parses (a key without ``=`` or ``,``, a value without ``,``);
  an empty list writes nothing (Kubeflow's generator panics on it).
- ``standalone`` is not offered (``mljob convert`` names it): torchrun's ``--standalone`` gives every pod a
  rendezvous of its own; Kubeflow's ``PET_STANDALONE=""`` also stops torchrun, which reads it as an integer.
- ``metrics`` is not offered: mljob creates no HorizontalPodAutoscaler; point one at the job's scale subresource.
- Success: a worker succeeded (torchrun's agents exit 0 together, once the group finished), as in Kubeflow,
  but not while worker 0, the rendezvous host, failed.
- ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (last): with torch's default since 2.4 (checked on 2.13), an agent that
  joins after the first round (a lost worker's replacement, a scale-up) waits for a key the others never write
  again; 60 s later every agent fails. With it, the group re-forms in place within seconds.
- ``mljob run``: the ``c10d`` rendezvous is on 127.0.0.1 (worker 0's port, or ``rdzvPort``) with worker 0
  hosting it, whatever ``rdzvHost`` says (:meth:`PyTorch.local_wiring`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from mljob import (
    Cluster,
    Elastic,
    Framework,
    LocalWiring,
    MLJob,
    Outcome,
    Problem,
    Replica,
    RestartPolicy,
    Role,
    hookimpl,
)

__all__ = ["ElasticPolicy", "PyTorch", "PyTorchOptions", "RendezvousSetting", "mljob_register_frameworks"]

NPROC_WORDS = ("auto", "cpu", "gpu")
"""torchrun's symbolic ``--nproc-per-node`` values: one process per GPU (or CPU) it finds."""
ELASTIC = "spec.frameworkOptions.elasticPolicy"
WORKER_0 = Replica("Worker", 0)
LOCALHOST = "127.0.0.1"
IS_HOST = "is_host"
NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
"""torch >= 2.4 shares the c10d rendezvous store with the training processes and keeps rank 0's address from its
first round; an agent that joins a later round (a replacement, a scale-up) then waits for an address nobody writes,
and after ``read_timeout`` (60 s) every agent fails. ``1`` gives each round its own (pytorch/pytorch#135712)."""
"""torchrun's c10d rendezvous setting that says whether this node hosts the store (else guessed from names)."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _custom(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


class RendezvousSetting(BaseModel):
    """One entry of ``rdzvConf`` (Kubeflow's ``RDZVConf``): ``key=value`` in torchrun's ``--rdzv-conf``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="The setting's name (torchrun's c10d backend reads e.g. read_timeout, is_host).")
    value: str = Field(description="Its value.")

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip() or "=" in value or "," in value:
            raise _custom("rdzv_conf_key", f'must be a non-empty name without "=" or ",", got {value!r}')
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if not value.strip() or "," in value:
            raise _custom("rdzv_conf_value", f'must be non-empty and without ",", got {value!r}')
        return value


class ElasticPolicy(BaseModel):
    """``frameworkOptions.elasticPolicy``: Kubeflow's PyTorchJob ``elasticPolicy``, run by torchrun's agents."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    min_replicas: StrictInt | None = Field(
        None,
        alias="minReplicas",
        ge=1,
        description="The fewest Workers the job goes on with; default maxReplicas, else the Worker count.",
    )
    max_replicas: StrictInt | None = Field(
        None,
        alias="maxReplicas",
        ge=1,
        description="The most Workers the job may grow to; default minReplicas, else the Worker count.",
    )
    rdzv_backend: Literal["c10d", "etcd", "etcd-v2"] = Field(
        "c10d", alias="rdzvBackend", description="torchrun's rendezvous backend (PET_RDZV_BACKEND)."
    )
    rdzv_port: StrictInt | None = Field(
        None, alias="rdzvPort", description="The rendezvous port; default the Worker port."
    )
    rdzv_host: str | None = Field(
        None,
        alias="rdzvHost",
        min_length=1,
        description="The rendezvous host; default worker 0 (which then hosts the c10d store).",
    )
    rdzv_id: str | None = Field(
        None, alias="rdzvId", min_length=1, description="The rendezvous id (PET_RDZV_ID); default the job's name."
    )
    rdzv_conf: tuple[RendezvousSetting, ...] = Field(
        (), alias="rdzvConf", description="More rendezvous settings, [{key, value}] (PET_RDZV_CONF)."
    )
    max_restarts: StrictInt | None = Field(
        None,
        alias="maxRestarts",
        ge=0,
        description="How often torchrun restarts the worker group after a failure (PET_MAX_RESTARTS).",
    )
    n_proc_per_node: StrictInt | None = Field(
        None,
        alias="nProcPerNode",
        ge=1,
        description="Deprecated, as in Kubeflow: use frameworkOptions.nprocPerNode (not both).",
    )

    @field_validator("rdzv_port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise _custom("port", f"must be a port, 1 to 65535, got {value}")
        return value

    def bounds(self, workers: int) -> tuple[int, int]:
        """(min, max) with Kubeflow's defaults: one bound given, the other equal; neither, both ``workers``."""
        low, high = self.min_replicas, self.max_replicas
        if low is None and high is None:
            return workers, workers
        return (low if low is not None else high or 0), (high if high is not None else low or 0)


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
    elastic_policy: ElasticPolicy | None = Field(
        None,
        alias="elasticPolicy",
        description="Elastic training with torchrun, as Kubeflow's PyTorchJob elasticPolicy; Workers only.",
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
        raise _custom("nproc_per_node", f'must be "auto", "cpu", "gpu" or a positive integer, got {value!r}')


class PyTorch(Framework):
    """Master and Worker, wired for ``torch.distributed`` and ``torchrun``; Workers only, elastic, for torchrun."""

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
            "PET_RDZV_ENDPOINT",
            "PET_RDZV_BACKEND",
            "PET_MAX_RESTARTS",
            "PET_RDZV_ID",
            "PET_RDZV_CONF",
            NO_SHARED_STORE,
        }
    )
    port_name = "pytorchjob-port"
    version = _version()

    def options(self, job: MLJob) -> PyTorchOptions:
        return PyTorchOptions.model_validate(job.spec.framework_options)

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Kubeflow's rule, a Master has exactly one replica; someone to be rank 0; an elastic job's bounds."""
        return list(self._problems(job))

    def _problems(self, job: MLJob) -> Iterator[Problem]:
        specs = job.spec.replica_specs
        if "Master" in specs and specs["Master"].replicas != 1:
            yield Problem(
                "spec.replicaSpecs.Master.replicas",
                f"a Master has exactly 1 replica, got {specs['Master'].replicas}; "
                "leave Master out to let worker 0 coordinate",
            )
        workers = specs["Worker"].replicas if "Worker" in specs else 0
        options = self.options(job)
        policy = options.elastic_policy
        if policy is None:
            if "Master" not in specs and not workers:
                yield Problem("spec.replicaSpecs.Worker.replicas", "a PyTorch job without a Master needs a Worker")
            return
        if "Master" in specs:
            yield Problem(
                "spec.replicaSpecs.Master",
                "an elastic job (frameworkOptions.elasticPolicy) has Workers only: torchrun's rendezvous assigns "
                "every rank, so there is no Master; leave it out (worker 0 hosts the rendezvous)",
            )
        low, high = policy.bounds(workers)
        if workers < 1:
            yield Problem(
                "spec.replicaSpecs.Worker.replicas",
                f"an elastic job (frameworkOptions.elasticPolicy) needs at least 1 Worker, got {workers}",
            )
        elif policy.min_replicas is not None and policy.max_replicas is not None:
            if low > high:
                yield Problem(f"{ELASTIC}.maxReplicas", f"must be at least minReplicas ({low}), got {high}")
            elif not low <= workers <= high:
                yield Problem(
                    "spec.replicaSpecs.Worker.replicas",
                    f"must be within the elastic policy's minReplicas ({low}) and maxReplicas ({high}), got {workers}",
                )
        elif workers != low:
            given, other = (
                ("minReplicas", "maxReplicas") if policy.min_replicas is not None else ("maxReplicas", "minReplicas")
            )
            yield Problem(
                "spec.replicaSpecs.Worker.replicas",
                f"must be {low}: the elastic policy sets {given} ({low}) and not {other}, which is then the same, "
                f"as in Kubeflow; got {workers}",
            )
        if policy.n_proc_per_node is not None and "nproc_per_node" in options.model_fields_set:
            yield Problem(
                f"{ELASTIC}.nProcPerNode",
                "must not be used with spec.frameworkOptions.nprocPerNode (nProcPerNode is deprecated, as in "
                "Kubeflow: keep nprocPerNode)",
            )

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """Master 0 coordinates; without a Master, worker 0 does (in an elastic job it hosts the rendezvous)."""
        return replica == _coordinator(job)

    def elastic(self, job: MLJob) -> Elastic | None:
        """The Workers, between the policy's bounds (Kubeflow's defaults), when the job has an elastic policy."""
        policy = self.options(job).elastic_policy
        if policy is None:
            return None
        specs = job.spec.replica_specs
        low, high = policy.bounds(specs["Worker"].replicas if "Worker" in specs else 0)
        return Elastic("Worker", low, high)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        options = self.options(job)
        if options.elastic_policy is not None:
            return self._elastic_env(job, replica, cluster, options, options.elastic_policy)
        coordinator = _coordinator(job)
        master = cluster.address(coordinator)
        rank = replica.index + 1 if replica.role == "Worker" and coordinator.role == "Master" else replica.index
        nodes = sum(spec.replicas for spec in job.spec.replica_specs.values())
        nproc = options.nproc_per_node
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

    def _elastic_env(
        self, job: MLJob, replica: Replica, cluster: Cluster, options: PyTorchOptions, policy: ElasticPolicy
    ) -> dict[str, str]:
        """Kubeflow's ``setPodEnv`` for a job of Workers with an elastic policy, then its elastic generator.

        Nothing here reads the Worker count (except through :meth:`ElasticPolicy.bounds` when the policy gives
        neither bound, as Kubeflow's defaulter does).
        """
        specs = job.spec.replica_specs
        low, high = policy.bounds(specs["Worker"].replicas if "Worker" in specs else 0)
        if policy.rdzv_host is not None and policy.rdzv_port is not None:
            host, port = policy.rdzv_host, policy.rdzv_port
        else:
            worker_0 = cluster.address(WORKER_0)
            host = policy.rdzv_host if policy.rdzv_host is not None else worker_0.host
            port = policy.rdzv_port if policy.rdzv_port is not None else worker_0.port
        env = {"PYTHONUNBUFFERED": "1"}
        if policy.n_proc_per_node is None:  # Kubeflow defaults spec.nprocPerNode only without the deprecated field
            env["PET_NPROC_PER_NODE"] = str(options.nproc_per_node)
        env["PET_RDZV_ENDPOINT"] = f"{host}:{port}"
        env["PET_RDZV_BACKEND"] = policy.rdzv_backend
        env["PET_NNODES"] = f"{low}:{high}"
        if policy.max_restarts is not None:
            env["PET_MAX_RESTARTS"] = str(policy.max_restarts)
        if policy.n_proc_per_node is not None:
            env["PET_NPROC_PER_NODE"] = str(policy.n_proc_per_node)
        env["PET_RDZV_ID"] = policy.rdzv_id if policy.rdzv_id is not None else job.name
        conf = _rendezvous_conf(policy, replica, default_host=policy.rdzv_host is None)
        if conf:
            env["PET_RDZV_CONF"] = conf
        env[NO_SHARED_STORE] = "1"
        return env

    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        """An elastic job's c10d rendezvous on 127.0.0.1, hosted by worker 0, even where ``rdzvHost`` names a host.

        Without ``rdzvHost`` the pod's wiring already says so (the local cluster's worker 0 is 127.0.0.1 and its
        port). With it, the port is ``rdzvPort``; the local port of worker 0 is not known here, so a job that
        names a host must name its port too. The etcd backends keep their endpoint: an etcd server is not part
        of the job.
        """
        policy = self.options(job).elastic_policy
        if policy is None or policy.rdzv_host is None or policy.rdzv_backend != "c10d":
            return LocalWiring()
        if policy.rdzv_port is None:
            raise ValueError(
                f"frameworkOptions.elasticPolicy.rdzvHost is {policy.rdzv_host!r}: for mljob run, set rdzvPort too "
                "(the rendezvous then listens on 127.0.0.1 at that port), or leave rdzvHost out"
            )
        env = {"PET_RDZV_ENDPOINT": f"{LOCALHOST}:{policy.rdzv_port}"}
        conf = _rendezvous_conf(policy, replica, default_host=True)
        if conf:
            env["PET_RDZV_CONF"] = conf
        return LocalWiring(env=env)

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The master succeeded; without one, every worker did; elastic, a worker did and worker 0 did not fail."""
        specs = job.spec.replica_specs
        if "Master" in specs:
            return outcomes.get(Replica("Master", 0)) is Outcome.SUCCEEDED
        if self.options(job).elastic_policy is not None:
            workers = [o for r, o in outcomes.items() if r.role == "Worker"]
            return Outcome.SUCCEEDED in workers and outcomes.get(WORKER_0) is not Outcome.FAILED
        workers_count = specs["Worker"].replicas if "Worker" in specs else 0
        return workers_count > 0 and all(
            outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in range(workers_count)
        )


def _coordinator(job: MLJob) -> Replica:
    """Where ``MASTER_ADDR`` points: master 0, or worker 0 in a job without a Master."""
    return Replica("Master", 0) if "Master" in job.spec.replica_specs else WORKER_0


def _rendezvous_conf(policy: ElasticPolicy, replica: Replica, *, default_host: bool) -> str:
    """``PET_RDZV_CONF``: ``rdzvConf`` as ``key=value,...`` (Kubeflow's order), then ``is_host`` where mljob decides
    who hosts the c10d store (worker 0, the default host) and the user did not."""
    pairs = [(s.key, s.value) for s in policy.rdzv_conf]
    if default_host and policy.rdzv_backend == "c10d" and all(key.strip() != IS_HOST for key, _ in pairs):
        pairs.append((IS_HOST, "1" if replica == WORKER_0 else "0"))
    return ",".join(f"{key}={value}" for key, value in pairs)


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the PyTorch framework to mljob."""
    register(PyTorch())
