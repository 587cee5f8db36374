"""PaddlePaddle for mljob: what ``python -m paddle.distributed.launch`` needs on every node, as Kubeflow's PaddleJob.

Each replica (a node) runs paddle's launcher, which reads ``PADDLE_MASTER`` (``host:port`` of the
rendezvous), ``PADDLE_NNODES`` (how many nodes meet there) and ``PADDLE_JOB_ID`` from the environment.
The node whose own address is ``PADDLE_MASTER`` hosts the rendezvous store and becomes rank 0; the
launcher then starts the training processes with ``PADDLE_TRAINER_ID``, ``PADDLE_TRAINER_ENDPOINTS``,
... set for ``paddle.distributed.init_parallel_env()``.

Everything follows training-operator v1.9.3's PaddleJob:

- roles ``Master`` and ``Worker``, default port 36543 in a container port named ``master`` of the
  container ``paddle``, default restart policy ``OnFailure`` (``pkg/apis/kubeflow.org/v1/paddlepaddle_types.go``,
  ``paddlepaddle_defaults.go``);
- the variables, in ``setPodEnv``'s order (``pkg/controller.v1/paddlepaddle/envvar.go``):
  ``PYTHONUNBUFFERED=1``, ``PADDLE_JOB_ID`` (the job's name), ``PADDLE_NNODES`` (every replica of every
  role), then ``PADDLE_MASTER``. Without a Master the job is collective and the rendezvous is worker 0;
  with one, paddle's launcher runs in parameter-server mode, the rendezvous is master 0, and every
  master gets ``PADDLE_SERVER_NUM=1`` and every worker ``PADDLE_TRAINER_NUM=1`` (one server or trainer
  per pod). The rendezvous replica itself gets ``POD_IP_DUMMY`` and ``PADDLE_MASTER=$(POD_IP_DUMMY):<port>``;
- the coordinator (mljob's leader label) is that rendezvous replica;
- success (``UpdateJobStatus`` in ``paddlepaddle_controller.go``): with a Master, every master
  succeeded; without one, every worker succeeded.

``POD_IP_DUMMY`` is the one place a cluster needs more than a name. Paddle's launcher hosts the
rendezvous store only on a node whose ``PADDLE_MASTER`` host is literally ``127.0.0.1`` or its own IP
address (``paddle/distributed/launch/controllers/master.py``, ``HTTPMaster.lazy_init``); a DNS name
never matches, and the job would wait forever. So :meth:`Paddle.env` writes the rendezvous replica's
address from the ``cluster`` as every framework does (``POD_IP_DUMMY=<host>``, ``PADDLE_MASTER=<host>:<port>``:
``127.0.0.1`` in ``mljob run``, which paddle accepts: there the node that binds the port first hosts the
store), and :func:`mljob_mutate_pod`, for a pod rendered
for a cluster, turns those two entries of that one pod into Kubeflow's: ``POD_IP_DUMMY`` from the
downward API (``status.podIP``) and ``PADDLE_MASTER=$(POD_IP_DUMMY):<port>``, the port unchanged. No
other address is made up anywhere.

Where mljob differs from Kubeflow:

- the other replicas reach the rendezvous at the cluster's address: for an MLJob ``<pod>.<job>.<namespace>.svc``
  behind mljob's one headless service (Kubeflow: ``<job>-master-0`` or ``<job>-worker-0``, the Service of
  that pod, which is also what the cluster gives a PaddleJob served through mljob's Kubeflow front door);
- the variables go to the wiring container only (``paddle``, or the only container), first in its
  ``env``; Kubeflow appends them to every container of the pod, after the user's;
- a user may not set any of them (a validation error);
- a ``Master`` with 0 replicas counts as no Master: the job is collective and its workers decide success
  (Kubeflow wires parameter-server mode around a master 0 that does not exist, and reports success at
  once); a job with no replica of either role is refused (Kubeflow reports success at once).

Kubeflow's ``elasticPolicy`` for PaddleJob is not supported: v1.9.3 only defaults its bounds and
nothing in its controller reads them; the framework takes no ``frameworkOptions``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mljob import Cluster, Framework, MLJob, Outcome, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = ["Paddle", "mljob_mutate_pod", "mljob_register_frameworks"]

NAME = "paddle"
DEFAULT_PORT = 36543
"""training-operator v1's ``PaddleJobDefaultPort``."""
POD_IP = "POD_IP_DUMMY"
"""Kubeflow's name for the rendezvous pod's own IP address, which ``PADDLE_MASTER`` refers to."""
MASTER = "PADDLE_MASTER"


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-paddle")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class Paddle(Framework):
    """Master and Worker for ``paddle.distributed.launch``: collective without a Master, parameter-server with."""

    name = NAME
    roles = (
        Role("Master", default_port=DEFAULT_PORT, leader=True),
        Role("Worker", default_port=DEFAULT_PORT),
    )
    # Kubeflow's PaddleJobDefaultRestartPolicy. Paddle's launcher also restarts its own trainers
    # (--max_restart, 3 by default) before the node's process exits.
    default_restart_policy = RestartPolicy.ON_FAILURE
    reserved_env = frozenset(
        {
            "PYTHONUNBUFFERED",
            "PADDLE_JOB_ID",
            "PADDLE_NNODES",
            POD_IP,
            MASTER,
            "PADDLE_SERVER_NUM",
            "PADDLE_TRAINER_NUM",
        }
    )
    port_name = "master"
    version = _version()

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Someone to host the rendezvous: master 0, or worker 0 in a job without a Master."""
        if not _replicas(job, "Master") and not _replicas(job, "Worker"):
            return [Problem("spec.replicaSpecs.Worker.replicas", "a Paddle job without a Master needs a Worker")]
        return ()

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """The replica that hosts the rendezvous: master 0, or worker 0 without a Master."""
        return replica == _rendezvous(job)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        rendezvous = _rendezvous(job)
        address = cluster.address(rendezvous)
        env = {
            "PYTHONUNBUFFERED": "1",
            "PADDLE_JOB_ID": job.name,
            "PADDLE_NNODES": str(sum(spec.replicas for spec in job.spec.replica_specs.values())),
        }
        if replica == rendezvous:
            env[POD_IP] = address.host  # the pod's own IP in a cluster: see mljob_mutate_pod
        env[MASTER] = str(address)
        if rendezvous.role == "Master":  # parameter-server mode: one server or one trainer per pod
            env["PADDLE_SERVER_NUM" if replica.role == "Master" else "PADDLE_TRAINER_NUM"] = "1"
        return env

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """Every master succeeded (Kubeflow's rule); without a Master, every worker did."""
        role = _rendezvous(job).role
        count = _replicas(job, role)
        return count > 0 and all(outcomes.get(Replica(role, i)) is Outcome.SUCCEEDED for i in range(count))


def _replicas(job: MLJob, role: str) -> int:
    spec = job.spec.replica_specs.get(role)
    return spec.replicas if spec is not None else 0


def _rendezvous(job: MLJob) -> Replica:
    """Where paddle's launchers meet (Kubeflow's ``masterAddr``): master 0, or worker 0 in a collective job."""
    return Replica("Master", 0) if _replicas(job, "Master") else Replica("Worker", 0)


def _wiring_container(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The container that holds the wiring: the one named ``paddle``, or the only one."""
    containers: list[dict[str, Any]] = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        if container.get("name") == NAME:
            return container
    return containers[0] if len(containers) == 1 else None


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the Paddle framework to mljob."""
    register(Paddle())


@hookimpl
def mljob_mutate_pod(job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
    """In the rendezvous pod of a Paddle job, name the pod's own IP address as Kubeflow does.

    ``POD_IP_DUMMY`` comes from the downward API (``status.podIP``) and ``PADDLE_MASTER`` becomes
    ``$(POD_IP_DUMMY):<port>`` (the kubelet expands it): paddle's launcher hosts the rendezvous only
    where that host is its own IP address. Every other pod, and every other framework's, is left as
    it is; so is a pod whose two entries are not the wiring :meth:`Paddle.env` wrote.
    """
    if job.spec.framework != NAME or replica != _rendezvous(job):
        return
    container = _wiring_container(pod)
    if container is None:
        return
    env: list[dict[str, Any]] = container.get("env") or []
    names = [entry.get("name") for entry in env]
    if POD_IP not in names or MASTER not in names:
        return
    pod_ip, master = env[names.index(POD_IP)], env[names.index(MASTER)]
    host, _, port = str(master.get("value", "")).rpartition(":")
    if "valueFrom" in pod_ip or host != pod_ip.get("value") or not port.isdigit():
        return
    pod_ip.pop("value")
    pod_ip["valueFrom"] = {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}  # as the API server stores it
    master["value"] = f"$({POD_IP}):{port}"
