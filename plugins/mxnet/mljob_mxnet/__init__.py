"""MXNet for mljob: ps-lite's ``DMLC_*`` variables and ``MX_CONFIG``, as Kubeflow's MXJob sets them.

Kubeflow's wiring (training-operator v1, ``pkg/controller.v1/mxnet/mxnet.go``, ``SetPodEnv`` and
``genMXConfig``): ``MX_CONFIG`` is Go's ``json.Marshal`` of ``{"cluster": {<role>: [{"url",
"port"}, ...]}, "labels": {<role>: <the pod template's "tuner-server-key" annotation>}, "task":
{"type", "index"}}`` with roles lower-case and sorted; then ``DMLC_PS_ROOT_PORT``,
``DMLC_PS_ROOT_URI`` (scheduler 0), ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``, ``DMLC_ROLE``,
``DMLC_USE_KUBERNETES=1`` (ps-lite's scheduler then binds 0.0.0.0, since its URI is a DNS name)
and, on workers, ``DMLC_WORKER_ID`` (for BytePS).

What mljob adds: ps-lite's servers and workers bind the address they find themselves (the first
non-loopback interface, a random port) unless ``DMLC_NODE_HOST`` and ``PORT`` say otherwise. A
pod has one IP of its own, so Kubeflow leaves them unset and so does mljob when the cluster gives
DNS names. When the cluster gives IP addresses (a local run, every replica on 127.0.0.1 with its
own port), they are set to the replica's own address, so every node binds where the cluster said
it would and a machine without a network interface works.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
from collections.abc import Callable, Mapping

from mljob import Cluster, Framework, MLJob, Outcome, Replica, RestartPolicy, Role, hookimpl

__all__ = ["MXNet", "mljob_register_frameworks"]

TUNER_SERVER_KEY = "tuner-server-key"
"""The pod template annotation Kubeflow copies into ``MX_CONFIG``'s labels (for TVM auto-tuning)."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-mxnet")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class MXNet(Framework):
    """One Scheduler, Servers and Workers: MXNet's parameter-server training (``kvstore=dist_*``)."""

    name = "mxnet"
    roles = (
        Role("Scheduler", default_port=9091, leader=True, min_replicas=1, max_replicas=1, runs_until_stopped=True),
        Role("Server", default_port=9091, min_replicas=1, runs_until_stopped=True),
        Role("Worker", default_port=9091, min_replicas=1),
    )
    default_restart_policy = RestartPolicy.NEVER  # Kubeflow's MXJobDefaultRestartPolicy
    reserved_env = frozenset(
        {
            "MX_CONFIG",
            "DMLC_PS_ROOT_PORT",
            "DMLC_PS_ROOT_URI",
            "DMLC_NUM_SERVER",
            "DMLC_NUM_WORKER",
            "DMLC_ROLE",
            "DMLC_USE_KUBERNETES",
            "DMLC_WORKER_ID",
            "DMLC_NODE_HOST",
            "PORT",
        }
    )
    port_name = "mxjob-port"
    version = _version()

    def __init__(self) -> None:
        self._shared: tuple[MLJob, Cluster, str] | None = None

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        specs = job.spec.replica_specs
        scheduler = cluster.address(Replica("Scheduler", 0))
        role = replica.role.lower()
        task = f'{{"type":{json.dumps(role)},"index":{replica.index}}}'
        mx_config = f'{self._cluster_and_labels(job, cluster)},"task":{task}}}'
        env = {
            "MX_CONFIG": mx_config,
            "DMLC_PS_ROOT_PORT": str(scheduler.port),
            "DMLC_PS_ROOT_URI": scheduler.host,
            "DMLC_NUM_SERVER": str(specs["Server"].replicas),
            "DMLC_NUM_WORKER": str(specs["Worker"].replicas),
            "DMLC_ROLE": role,
            "DMLC_USE_KUBERNETES": "1",
        }
        if replica.role == "Worker":
            env["DMLC_WORKER_ID"] = str(replica.index)
        if replica.role != "Scheduler":
            own = cluster.address(replica)
            if _is_ip(own.host):
                env["DMLC_NODE_HOST"] = own.host
                env["PORT"] = str(own.port)
        return env

    def _cluster_and_labels(self, job: MLJob, cluster: Cluster) -> str:
        """``MX_CONFIG`` up to its task, serialised once per (job, cluster), not once per replica.

        The cache holds the last pair by identity: a job is immutable and a cluster answers the
        same addresses for its lifetime.
        """
        cached = self._shared
        if cached is not None and cached[0] is job and cached[1] is cluster:
            return cached[2]
        specs = job.spec.replica_specs
        members: dict[str, list[dict[str, str | int]]] = {}
        labels: dict[str, str] = {}
        for role_name in sorted(specs, key=str.lower):
            addresses = [cluster.address(Replica(role_name, i)) for i in range(specs[role_name].replicas)]
            members[role_name.lower()] = [{"url": a.host, "port": a.port} for a in addresses]
            annotations = (specs[role_name].template.get("metadata") or {}).get("annotations") or {}
            labels[role_name.lower()] = str(annotations.get(TUNER_SERVER_KEY, ""))
        compact = (",", ":")
        members_json, labels_json = json.dumps(members, separators=compact), json.dumps(labels, separators=compact)
        text = f'{{"cluster":{members_json},"labels":{labels_json}'
        self._shared = (job, cluster, text)
        return text

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """Every worker succeeded; the scheduler and servers are then stopped if still running."""
        specs = job.spec.replica_specs
        workers = specs["Worker"].replicas if "Worker" in specs else 0
        return workers > 0 and all(outcomes.get(Replica("Worker", i)) is Outcome.SUCCEEDED for i in range(workers))


def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address, which ps-lite can bind (it cannot bind a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the MXNet framework to mljob."""
    register(MXNet())
