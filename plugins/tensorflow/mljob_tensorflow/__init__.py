"""TensorFlow for mljob: ``TF_CONFIG`` exactly as Kubeflow's TFJob (training-operator v1) writes it.

Kubeflow's format (``pkg/controller.v1/tensorflow/tensorflow.go``, ``genTFConfigJSONStr``) is Go's
``json.Marshal`` of ``{"cluster": {...}, "task": {"type", "index"}, "environment": "cloud"}``:
compact, struct fields in that order, cluster roles sorted by their lower-case names, each a
list of ``"host:port"``. Scripts migrated from a TFJob therefore parse the same text.

Where mljob differs from Kubeflow v1: the training replicas' cluster leaves the evaluator out
(TensorFlow's documented layout, "the evaluator is not part of the training cluster", and what
``ParameterServerStrategy`` needs); the evaluator's own ``TF_CONFIG`` lists it, exactly as
Kubeflow does for every replica since kubeflow/training-operator#1146. ``enableDynamicWorker``
(a sparse cluster) is not offered.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mljob import Cluster, Framework, MLJob, Outcome, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = ["TensorFlow", "TensorFlowOptions", "mljob_register_frameworks"]

LEADERS = ("Chief", "Master")
"""Master is the legacy name of Chief; a job has at most one of them."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class TensorFlowOptions(BaseModel):
    """``spec.frameworkOptions`` of a TensorFlow job."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    success_policy: Literal["", "AllWorkers"] = Field(
        "",
        alias="successPolicy",
        description=(
            'Kubeflow\'s TFJob successPolicy. "" (default): the job succeeds when the chief succeeds, '
            'or worker 0 when there is no chief. "AllWorkers": when every worker has succeeded.'
        ),
    )


class TensorFlow(Framework):
    """Chief (or its legacy name Master), Worker, PS and Evaluator, wired by ``TF_CONFIG``."""

    name = "tensorflow"
    roles = (
        Role("Chief", default_port=2222, leader=True, max_replicas=1),
        Role("Master", default_port=2222, leader=True, max_replicas=1),
        Role("Worker", default_port=2222),
        Role("PS", default_port=2222, runs_until_stopped=True),
        Role("Evaluator", default_port=2222, in_cluster=False),
    )
    default_restart_policy = RestartPolicy.NEVER  # Kubeflow's TFJobDefaultRestartPolicy
    options_model = TensorFlowOptions
    reserved_env = frozenset({"TF_CONFIG"})
    port_name = "tfjob-port"
    version = _version()

    def __init__(self) -> None:
        self._cluster_text: tuple[MLJob, Cluster, str, str] | None = None

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """One chief at most under either name, and someone whose success ends the job."""
        specs = job.spec.replica_specs
        problems: list[Problem] = []
        if all(role in specs for role in LEADERS):
            problems.append(
                Problem("spec.replicaSpecs", "Chief and Master are the same role (Master is its legacy name); keep one")
            )
        if not any(specs[role].replicas for role in (*LEADERS, "Worker") if role in specs):
            problems.append(
                Problem(
                    "spec.replicaSpecs",
                    "a TensorFlow job needs a Chief or at least one Worker: the job succeeds when they do",
                )
            )
        return problems

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """The chief leads; without one, worker 0 does (Kubeflow's ``IsMasterRole``)."""
        if replica.index != 0:
            return False
        if replica.role in LEADERS:
            return True
        return replica.role == "Worker" and not _has_chief(job)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        # Kubeflow's isDistributed: a job of exactly one replica gets no TF_CONFIG, so a
        # single-process script does not believe it is part of a cluster.
        if sum(spec.replicas for spec in job.spec.replica_specs.values()) == 1:
            return {}
        role = self.role(replica.role)
        members = self._cluster_json(job, cluster, outsiders=role is not None and not role.in_cluster)
        task = f'{{"type":{json.dumps(replica.role.lower())},"index":{replica.index}}}'
        return {"TF_CONFIG": f'{{"cluster":{members},"task":{task},"environment":"cloud"}}'}

    def _cluster_json(self, job: MLJob, cluster: Cluster, *, outsiders: bool) -> str:
        """The ``"cluster"`` object, serialised once per (job, cluster) rather than once per replica.

        Training replicas see the training cluster; an evaluator also sees the evaluators, since
        TensorFlow treats it as "its own partition of the cluster" (``multi_worker_util``
        looks it up there) — that view is exactly Kubeflow's.

        Every replica of a render shares the text; rebuilding it per replica makes a 2,000-worker
        job quadratic. The cache holds the last pair by identity: a job is immutable and a
        cluster answers the same addresses for its lifetime.
        """
        cached = self._cluster_text
        if cached is None or cached[0] is not job or cached[1] is not cluster:
            members: dict[str, list[str]] = {}
            training: dict[str, list[str]] = {}
            for role_name in sorted(job.spec.replica_specs, key=str.lower):
                count = job.spec.replica_specs[role_name].replicas
                addresses = [str(cluster.address(Replica(role_name, i))) for i in range(count)]
                members[role_name.lower()] = addresses
                role = self.role(role_name)
                if role is not None and role.in_cluster:
                    training[role_name.lower()] = addresses
            compact = (",", ":")
            cached = (job, cluster, json.dumps(training, separators=compact), json.dumps(members, separators=compact))
            self._cluster_text = cached
        return cached[3] if outsiders else cached[2]

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The chief succeeded; without one, worker 0 did (or every worker, with ``AllWorkers``)."""
        specs = job.spec.replica_specs
        for role in LEADERS:
            if role in specs and specs[role].replicas:
                return outcomes.get(Replica(role, 0)) is Outcome.SUCCEEDED
        workers = specs["Worker"].replicas if "Worker" in specs else 0
        if not workers:
            return False
        options = TensorFlowOptions.model_validate(job.spec.framework_options)
        needed = range(workers) if options.success_policy == "AllWorkers" else range(1)
        return all(outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in needed)


def _has_chief(job: MLJob) -> bool:
    specs = job.spec.replica_specs
    return any(role in specs and specs[role].replicas > 0 for role in LEADERS)


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the TensorFlow framework to mljob."""
    register(TensorFlow())
