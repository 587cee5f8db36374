"""A tiny framework for local-runtime tests: no ML library, every replica gets its wiring in env.

Roles: Lead, Worker, and Server (runs until stopped). The success rule is PyTorch's shape: the
lead succeeded; without a Lead, every worker did (the base class's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mljob import Cluster, Framework, MLJob, Outcome, Replica, Role, hookimpl
from mljob.plugins import Plugins, load_plugins


class Tiny(Framework):
    name = "tiny"
    roles = (
        Role("Lead", default_port=1000, leader=True),
        Role("Worker", default_port=1000),
        Role("Server", default_port=1000, runs_until_stopped=True),
    )
    reserved_env = frozenset({"TINY_ME", "TINY_PEERS"})

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        peers = [f"{r}={cluster.address(r)}" for r in sorted(_replicas(job))]
        return {"TINY_ME": str(replica), "TINY_PEERS": ",".join(peers)}

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        if "Lead" in job.spec.replica_specs:
            return outcomes.get(Replica("Lead", 0)) is Outcome.SUCCEEDED
        return super().succeeded(job, outcomes)


def _replicas(job: MLJob) -> list[Replica]:
    return [Replica(role, i) for role, spec in job.spec.replica_specs.items() for i in range(spec.replicas)]


class TinyPlugin:
    @hookimpl
    def mljob_register_frameworks(self, register):  # type: ignore[no-untyped-def]
        register(Tiny())


def tiny_plugins() -> Plugins:
    return load_plugins(entry_points=False, extra=[TinyPlugin()])


def container(command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": "tiny", "image": "python:3.11-slim", "command": command, **extra}


def write_job(
    folder: Path,
    roles: Mapping[str, tuple[int, str | None, dict[str, Any]]],
    run_policy: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
    name: str = "tiny",
) -> Path:
    """An MLJob file in ``folder``: role -> (replicas, restartPolicy, container)."""
    specs: dict[str, Any] = {}
    for role, (replicas, policy, ctr) in roles.items():
        spec: dict[str, Any] = {"replicas": replicas, "template": {"spec": {"containers": [ctr], **(pod or {})}}}
        if policy:
            spec["restartPolicy"] = policy
        specs[role] = spec
    doc = {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {"framework": "tiny", "replicaSpecs": specs, "runPolicy": run_policy or {}},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
