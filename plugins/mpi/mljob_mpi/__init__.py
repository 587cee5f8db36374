"""MPI for mljob: one Launcher runs ``mpirun`` over a hostfile; the Workers accept its SSH connections.

The wiring is the MPI Operator's (kubeflow/mpi-operator v0.8.0, ``pkg/controller/mpi_job_controller.go``,
``newLauncherPodTemplate``, ``newWorker``, ``newConfigMap``), with the same names and values, because
``mpirun``, Intel MPI's and MPICH's Hydra read them:

* every replica: ``K_MPI_JOB_ROLE`` (``launcher`` or ``worker``);
* the launcher, by ``mpiImplementation``: OpenMPI ``OMPI_MCA_orte_keep_fqdn_hostnames=true``,
  ``OMPI_MCA_orte_default_hostfile=/etc/mpi/hostfile``, ``OMPI_MCA_plm_rsh_args=-o ConnectionAttempts=10``,
  ``OMPI_MCA_orte_set_default_slots=<slotsPerWorker>``; Intel ``I_MPI_HYDRA_HOST_FILE``,
  ``I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS``, ``I_MPI_PERHOST``; MPICH ``HYDRA_HOST_FILE``,
  ``HYDRA_LAUNCH_EXTRA_ARGS``; and, as the MPI Operator does for a launcher that is not also a worker,
  empty ``NVIDIA_VISIBLE_DEVICES`` and ``NVIDIA_DRIVER_CAPABILITIES`` so it holds no GPU.

The hostfile (:func:`hostfile`) lists every worker's address as the cluster gives it,
``<job>-worker-<i>.<job>.<namespace>.svc slots=N`` (OpenMPI) or ``...:N`` (Intel, MPICH). In a cluster it
is the per-job ConfigMap ``<job>-config`` mounted at ``/etc/mpi``, beside the per-job SSH key Secret ``<job>-ssh``
in every replica's ``~/.ssh`` (:meth:`MPI.objects`, :func:`mljob_mutate_pod`). Under ``mljob run`` no SSH is
needed: the workers, which in a
cluster only run sshd, are not started, and the launcher's hostfile is a file of the run that puts every
slot on ``localhost``, so the user's own ``mpirun`` command starts every rank on this machine.
"""

from __future__ import annotations

import base64
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field

from mljob import Cluster, Framework, LocalWiring, MLJob, Outcome, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = [
    "MPI",
    "MPIOptions",
    "hostfile",
    "launcher_waits_for_workers",
    "mljob_mutate_pod",
    "mljob_register_frameworks",
    "ssh_key_pair",
]

LAUNCHER = Replica("Launcher", 0)
CONFIG_MOUNT_PATH = "/etc/mpi"
"""Where the MPI Operator mounts the job's ConfigMap (``configMountPath``)."""
HOSTFILE = "hostfile"
DISCOVER_HOSTS = "discover_hosts.sh"
HOSTFILE_PATH = f"{CONFIG_MOUNT_PATH}/{HOSTFILE}"
SSH_EXTRA_ARGS = "-o ConnectionAttempts=10"
"""Workers' sshd may not listen yet when the launcher starts (launcherCreationPolicy AtStartup)."""
CONFIG_SUFFIX = "-config"
"""The job's ConfigMap, ``<job>-config``: ``hostfile`` and ``discover_hosts.sh``, at /etc/mpi on the launcher."""
CONFIG_VOLUME = "mpi-job-config"
SSH_SECRET_SUFFIX = "-ssh"
"""The job's SSH key Secret, ``<job>-ssh`` (``kubernetes.io/ssh-auth``), mounted in every replica's ~/.ssh."""
SSH_AUTH_VOLUME = "ssh-auth"
ROOT_SSH_PATH = "/root/.ssh"
SSH_CLIENT_CONFIG = "StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\nLogLevel ERROR\n"
"""What an MPI image's /etc/ssh/ssh_config says for its launcher (the workers' host keys are never known ahead):
here in the Secret's ``ssh-config``, mounted as ~/.ssh/config, since no image is assumed to have it."""
SSH_PORT = 22
"""Where the workers' sshd listens unless a container port named ``ssh`` says otherwise."""

Implementation = Literal["OpenMPI", "Intel", "MPICH"]

HOSTFILE_ENV: Mapping[str, str] = {
    "OpenMPI": "OMPI_MCA_orte_default_hostfile",
    "Intel": "I_MPI_HYDRA_HOST_FILE",
    "MPICH": "HYDRA_HOST_FILE",
}
"""The variable that points each implementation's launcher at the hostfile."""


def _version() -> str:
    try:
        return importlib.metadata.version("mljob-mpi")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class MPIOptions(BaseModel):
    """``spec.frameworkOptions`` of an MPI job: the MPI Operator v2beta1 MPIJob's spec fields of the same names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    slots_per_worker: int = Field(
        1,
        alias="slotsPerWorker",
        gt=0,
        strict=True,
        description="MPI processes per worker: each worker's slots in the hostfile.",
    )
    launcher_creation_policy: Literal["AtStartup", "WaitForWorkersReady"] = Field(
        "AtStartup",
        alias="launcherCreationPolicy",
        description=(
            "AtStartup: the launcher starts with the workers (its ssh retries until they listen); "
            "WaitForWorkersReady: only once every worker is ready."
        ),
    )
    mpi_implementation: Implementation = Field(
        "OpenMPI",
        alias="mpiImplementation",
        description="Which MPI the image runs: it decides the launcher's variables and the hostfile's format.",
    )
    ssh_auth_mount_path: str = Field(
        ROOT_SSH_PATH,
        alias="sshAuthMountPath",
        pattern=r"^/",
        description="Where the job's SSH key Secret is mounted in every replica's first container (the user's ~/.ssh).",
    )


class MPI(Framework):
    """A Launcher that runs ``mpirun``, and Workers that run sshd for it."""

    name = "mpi"
    roles = (
        Role("Launcher", default_port=SSH_PORT, leader=True, min_replicas=1, max_replicas=1),
        # sshd never exits on its own: the workers are stopped once the launcher has succeeded.
        Role("Worker", default_port=SSH_PORT, min_replicas=1, runs_until_stopped=True),
    )
    default_restart_policy = RestartPolicy.ON_FAILURE  # the MPI Operator's launcher default (workers: Never)
    options_model = MPIOptions
    reserved_env = frozenset(
        {
            "K_MPI_JOB_ROLE",
            "OMPI_MCA_orte_keep_fqdn_hostnames",
            "OMPI_MCA_orte_default_hostfile",
            "OMPI_MCA_plm_rsh_args",
            "OMPI_MCA_orte_set_default_slots",
            "I_MPI_HYDRA_HOST_FILE",
            "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS",
            "I_MPI_PERHOST",
            "HYDRA_HOST_FILE",
            "HYDRA_LAUNCH_EXTRA_ARGS",
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
        }
    )
    port_name = "ssh"
    """A worker container port named ``ssh`` moves sshd off port 22: the launcher's ssh is then given ``-p``."""
    version = _version()

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        """The MPI Operator's variables, in its order; addresses live in the hostfile, not here."""
        if replica.role != "Launcher":
            return {"K_MPI_JOB_ROLE": "worker"}
        options = MPIOptions.model_validate(job.spec.framework_options)
        slots = str(options.slots_per_worker)
        ssh_port = cluster.address(Replica("Worker", 0)).port
        ssh_args = SSH_EXTRA_ARGS if ssh_port == SSH_PORT else f"{SSH_EXTRA_ARGS} -p {ssh_port}"
        wired = {"K_MPI_JOB_ROLE": "launcher"}
        if options.mpi_implementation == "OpenMPI":
            wired |= {
                "OMPI_MCA_orte_keep_fqdn_hostnames": "true",
                "OMPI_MCA_orte_default_hostfile": HOSTFILE_PATH,
                "OMPI_MCA_plm_rsh_args": ssh_args,
                "OMPI_MCA_orte_set_default_slots": slots,
            }
        elif options.mpi_implementation == "Intel":
            wired |= {
                "I_MPI_HYDRA_HOST_FILE": HOSTFILE_PATH,
                "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": ssh_args,
                "I_MPI_PERHOST": slots,
            }
        else:
            wired |= {"HYDRA_HOST_FILE": HOSTFILE_PATH, "HYDRA_LAUNCH_EXTRA_ARGS": ssh_args}
        return wired | {"NVIDIA_VISIBLE_DEVICES": "", "NVIDIA_DRIVER_CAPABILITIES": ""}

    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        """Every rank on this machine: no workers (no sshd to reach), a hostfile with every slot on localhost.

        ``mpirun`` starts ranks on ``localhost`` itself, without SSH; the slots are the workers' together,
        so the user's ``mpirun -n <workers * slotsPerWorker>`` runs unchanged.
        """
        if replica.role != "Launcher":
            return LocalWiring(run=False)
        options = MPIOptions.model_validate(job.spec.framework_options)
        slots = job.spec.replica_specs["Worker"].replicas * options.slots_per_worker
        return LocalWiring(
            env={HOSTFILE_ENV[options.mpi_implementation]: str(folder / HOSTFILE)},
            files={HOSTFILE: _line("localhost", slots, options.mpi_implementation)},
        )

    def objects(self, job: MLJob, cluster: Cluster) -> Sequence[Mapping[str, Any]]:
        """The MPI Operator's two per-job objects: ``<job>-config`` (the hostfile and ``discover_hosts.sh``) and
        ``<job>-ssh`` (a fresh ECDSA P-521 key pair, ``kubernetes.io/ssh-auth``), plus an ssh client config.

        The key is made here, once per spec generation: the operator creates the Secret once and keeps it.
        ``discover_hosts.sh`` lists every worker (the MPI Operator's lists those running, rewritten as they come).
        """
        workers = job.spec.replica_specs["Worker"].replicas
        discover = "#!/bin/sh\n" + "".join(
            f"echo {cluster.address(Replica('Worker', i)).host}\n" for i in range(workers)
        )
        private, public = ssh_key_pair()
        return [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": job.name + CONFIG_SUFFIX, "labels": {"app": job.name}},
                "data": {HOSTFILE: hostfile(job, cluster), DISCOVER_HOSTS: discover},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": job.name + SSH_SECRET_SUFFIX, "labels": {"app": job.name}},
                "type": "kubernetes.io/ssh-auth",
                "data": {
                    "ssh-privatekey": _b64(private),
                    "ssh-publickey": _b64(public),
                    "ssh-config": _b64(SSH_CLIENT_CONFIG.encode()),
                },
            },
        ]

    def starts_after(self, job: MLJob, replica: Replica) -> tuple[str, ...]:
        """``launcherCreationPolicy: WaitForWorkersReady``: the launcher's pod only once every worker is Ready."""
        if replica.role == LAUNCHER.role and launcher_waits_for_workers(job):
            return ("Worker",)
        return ()

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The launcher decides, as in the MPI Operator: its ``mpirun`` ends when every rank has."""
        return outcomes.get(LAUNCHER) is Outcome.SUCCEEDED

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Nothing beyond the roles' bounds and the options model, which the core checks at their fields."""
        return ()


def hostfile(job: MLJob, cluster: Cluster) -> str:
    """The hostfile the launcher's ``mpirun`` reads in a cluster: one line per worker, as the MPI Operator writes it.

    ``<worker host> slots=N`` for OpenMPI, ``<worker host>:N`` for Intel MPI and MPICH; the host is the
    worker's address as ``cluster`` gives it (``<job>-worker-<i>.<job>.<namespace>.svc`` in a cluster).
    """
    options = MPIOptions.model_validate(job.spec.framework_options)
    workers = job.spec.replica_specs["Worker"].replicas
    return "".join(
        _line(cluster.address(Replica("Worker", i)).host, options.slots_per_worker, options.mpi_implementation)
        for i in range(workers)
    )


def ssh_key_pair() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-521 key: the private key in PEM (``EC PRIVATE KEY``) and the public one as an
    authorized_keys line, as the MPI Operator's ``newSSHAuthSecret`` makes them."""
    key = ec.generate_private_key(ec.SECP521R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SSH_ITEMS = (
    {"key": "ssh-privatekey", "path": "id_rsa"},
    {"key": "ssh-publickey", "path": "id_rsa.pub"},
    {"key": "ssh-publickey", "path": "authorized_keys"},
    {"key": "ssh-config", "path": "config"},
)
CONFIG_ITEMS = (
    {"key": HOSTFILE, "path": HOSTFILE, "mode": 0o444},
    {"key": DISCOVER_HOSTS, "path": DISCOVER_HOSTS, "mode": 0o555},
)


@hookimpl
def mljob_mutate_pod(job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
    """Mount the job's objects as the MPI Operator does (``setupSSHOnPod``, the launcher's config volume): the SSH
    Secret in the first container of every replica, the ConfigMap at /etc/mpi in the launcher's."""
    if job.spec.framework != MPI.name:
        return
    options = MPIOptions.model_validate(job.spec.framework_options)
    spec = pod["spec"]
    container = spec["containers"][0]
    mode = 0o600 if options.ssh_auth_mount_path == ROOT_SSH_PATH else None
    secret: dict[str, Any] = {"secretName": job.name + SSH_SECRET_SUFFIX, "items": [dict(i) for i in SSH_ITEMS]}
    if mode is not None:
        secret["defaultMode"] = mode
    volumes = spec.setdefault("volumes", [])
    mounts = container.setdefault("volumeMounts", [])
    volumes.append({"name": SSH_AUTH_VOLUME, "secret": secret})
    mounts.append({"name": SSH_AUTH_VOLUME, "mountPath": options.ssh_auth_mount_path})
    if replica.role == LAUNCHER.role:
        items = [dict(i) for i in CONFIG_ITEMS]
        volumes.append({"name": CONFIG_VOLUME, "configMap": {"name": job.name + CONFIG_SUFFIX, "items": items}})
        mounts.append({"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_PATH})


def launcher_waits_for_workers(job: MLJob) -> bool:
    """Whether the launcher may start only once every worker is ready (``launcherCreationPolicy``)."""
    return MPIOptions.model_validate(job.spec.framework_options).launcher_creation_policy == "WaitForWorkersReady"


def _line(host: str, slots: int, implementation: Implementation) -> str:
    return f"{host} slots={slots}\n" if implementation == "OpenMPI" else f"{host}:{slots}\n"


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the MPI framework to mljob."""
    register(MPI())
