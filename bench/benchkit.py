"""What the benchmarks share: the job shape they measure and a framework for when none is installed.

The benchmarks run as scripts (``python bench/render.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Mapping

from mljob import Cluster, Framework, MLJob, Replica, Role, hookimpl


class Bench(Framework):
    """Used only when no framework plugin is installed, so a benchmark always has something to run."""

    name = "bench"
    roles = (Role("Leader", default_port=5000, leader=True, max_replicas=1), Role("Worker", default_port=5000))

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {"BENCH_LEADER": str(cluster.address(Replica("Leader", 0))), "BENCH_RANK": str(replica.index)}


class BenchPlugin:
    @hookimpl
    def mljob_register_frameworks(self, register):
        register(Bench())


def shape(framework: Framework, replicas: int) -> dict[str, int]:
    """A typical job of ``replicas`` replicas: the required roles, one leader, the rest in the bulk role."""
    counts: dict[str, int] = {}
    for role in framework.roles:
        if role.min_replicas > 0:
            counts[role.name] = role.min_replicas
        elif role.leader and not any(r.leader for r in framework.roles if r.name in counts):
            counts[role.name] = 1
    bulk = next(
        (r.name for r in framework.roles if r.name == "Worker"),
        next(r.name for r in framework.roles if r.max_replicas is None),
    )
    rest = replicas - sum(counts.values())
    if rest > 0:
        counts[bulk] = counts.get(bulk, 0) + rest
    return counts
