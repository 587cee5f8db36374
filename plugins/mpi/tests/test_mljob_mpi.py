"""The MPI plugin: the contract, then the MPI Operator's variables and hostfile pinned for representative jobs."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import mljob_mpi
import pytest
from cryptography.hazmat.primitives import serialization
from mljob_mpi import MPI, hostfile, launcher_waits_for_workers

from mljob import LocalWiring, MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import Framework
from mljob.plugin_testing import FrameworkContract, make_job
from mljob.plugins import load_plugins

MPI_ = MPI()


class TestMPIContract(FrameworkContract):
    framework = MPI_
    hooks = (SimpleNamespace(mljob_mutate_pod=mljob_mpi.mljob_mutate_pod),)  # mounts <job>-config and <job>-ssh

    def sample_job(self) -> MLJob:
        return make_job(MPI_, {"Launcher": 1, "Worker": 2}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [
            self.sample_job(),
            make_job(MPI_, {"Launcher": 1, "Worker": 3}, name="intel", options={"mpiImplementation": "Intel"}),
            make_job(
                MPI_,
                {"Launcher": 1, "Worker": 1},
                name="mpich",
                options={"mpiImplementation": "MPICH", "slotsPerWorker": 4},
            ),
        ]

    def invalid_jobs(self) -> Sequence[MLJob]:
        return [
            make_job(MPI_, {"Launcher": 2, "Worker": 2}, name="two-launchers"),
            make_job(MPI_, {"Worker": 2}, name="no-launcher"),
            make_job(MPI_, {"Launcher": 1, "Worker": 0}, name="no-workers"),
            make_job(MPI_, {"Launcher": 1, "Worker": 1}, name="no-slots", options={"slotsPerWorker": 0}),
            make_job(MPI_, {"Launcher": 1, "Worker": 1}, name="bad-mpi", options={"mpiImplementation": "OpenMP"}),
        ]


def env(job: MLJob, role: str, index: int = 0) -> Mapping[str, str]:
    return MPI_.env(job, Replica(role, index), ServiceCluster.of(job, MPI_))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_mpi])).problems]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables: the MPI Operator's, in its order ---------------------------------------------------

PI = make_job(MPI_, {"Launcher": 1, "Worker": 2}, name="pi", namespace="hpc", options={"slotsPerWorker": 2})


def test_an_openmpi_launcher_gets_the_mpi_operators_variables_in_its_order() -> None:
    assert list(env(PI, "Launcher").items()) == [
        ("K_MPI_JOB_ROLE", "launcher"),
        ("OMPI_MCA_orte_keep_fqdn_hostnames", "true"),
        ("OMPI_MCA_orte_default_hostfile", "/etc/mpi/hostfile"),
        ("OMPI_MCA_plm_rsh_args", "-o ConnectionAttempts=10"),
        ("OMPI_MCA_orte_set_default_slots", "2"),
        ("NVIDIA_VISIBLE_DEVICES", ""),
        ("NVIDIA_DRIVER_CAPABILITIES", ""),
    ]


def test_an_intel_mpi_launcher_gets_hydras_intel_names() -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 2}, options={"mpiImplementation": "Intel", "slotsPerWorker": 3})
    assert list(env(job, "Launcher").items()) == [
        ("K_MPI_JOB_ROLE", "launcher"),
        ("I_MPI_HYDRA_HOST_FILE", "/etc/mpi/hostfile"),
        ("I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS", "-o ConnectionAttempts=10"),
        ("I_MPI_PERHOST", "3"),
        ("NVIDIA_VISIBLE_DEVICES", ""),
        ("NVIDIA_DRIVER_CAPABILITIES", ""),
    ]


def test_an_mpich_launcher_gets_hydras_names_and_no_slots_variable() -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 2}, options={"mpiImplementation": "MPICH", "slotsPerWorker": 3})
    assert list(env(job, "Launcher").items()) == [
        ("K_MPI_JOB_ROLE", "launcher"),
        ("HYDRA_HOST_FILE", "/etc/mpi/hostfile"),
        ("HYDRA_LAUNCH_EXTRA_ARGS", "-o ConnectionAttempts=10"),
        ("NVIDIA_VISIBLE_DEVICES", ""),
        ("NVIDIA_DRIVER_CAPABILITIES", ""),
    ]


@pytest.mark.parametrize("implementation", ["OpenMPI", "Intel", "MPICH"])
def test_a_worker_only_learns_its_role(implementation: str) -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 3}, options={"mpiImplementation": implementation})
    assert [env(job, "Worker", i) for i in range(3)] == [{"K_MPI_JOB_ROLE": "worker"}] * 3


# -- the hostfile ---------------------------------------------------------------------------------------


def test_the_hostfile_names_every_worker_by_its_service_dns_name() -> None:
    assert hostfile(PI, ServiceCluster.of(PI, MPI_)) == (
        "pi-worker-0.pi.hpc.svc slots=2\npi-worker-1.pi.hpc.svc slots=2\n"
    )


@pytest.mark.parametrize("implementation", ["Intel", "MPICH"])
def test_hydras_hostfile_is_host_colon_slots(implementation: str) -> None:
    job = make_job(
        MPI_, {"Launcher": 1, "Worker": 2}, name="pi", namespace="hpc", options={"mpiImplementation": implementation}
    )
    assert hostfile(job, ServiceCluster.of(job, MPI_)) == "pi-worker-0.pi.hpc.svc:1\npi-worker-1.pi.hpc.svc:1\n"


# -- a local run: no workers, every slot on localhost -----------------------------------------------------


def test_locally_workers_are_not_started_and_the_launcher_reads_a_hostfile_of_the_run(tmp_path: Path) -> None:
    assert MPI_.local_wiring(PI, Replica("Worker", 1), tmp_path) == LocalWiring(run=False)
    assert MPI_.local_wiring(PI, Replica("Launcher", 0), tmp_path) == LocalWiring(
        env={"OMPI_MCA_orte_default_hostfile": str(tmp_path / "hostfile")},
        files={"hostfile": "localhost slots=4\n"},
    )


def test_locally_hydra_reads_its_own_variable(tmp_path: Path) -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 3}, options={"mpiImplementation": "Intel"})
    assert MPI_.local_wiring(job, Replica("Launcher", 0), tmp_path) == LocalWiring(
        env={"I_MPI_HYDRA_HOST_FILE": str(tmp_path / "hostfile")}, files={"hostfile": "localhost:3\n"}
    )


def test_other_frameworks_run_locally_as_in_a_pod(tmp_path: Path) -> None:
    class Plain(Framework):
        name = "plain"

    assert Plain().local_wiring(PI, Replica("Worker", 0), tmp_path) == LocalWiring()


# -- rendering, options, the success rule ------------------------------------------------------------------


def test_the_launcher_leads() -> None:
    pods = [p for p in render(make_job(MPI_, {"Launcher": 1, "Worker": 3}, name="j"), MPI_) if p["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("mljob.io/leader") == "true"] == [
        "j-launcher-0"
    ]


def test_launcher_creation_policy_defaults_to_at_startup() -> None:
    assert launcher_waits_for_workers(PI) is False
    job = make_job(MPI_, {"Launcher": 1, "Worker": 1}, options={"launcherCreationPolicy": "WaitForWorkersReady"})
    assert launcher_waits_for_workers(job) is True


def test_wait_for_workers_ready_holds_only_the_launcher_for_the_workers() -> None:
    waits = make_job(MPI_, {"Launcher": 1, "Worker": 2}, options={"launcherCreationPolicy": "WaitForWorkersReady"})
    assert MPI_.starts_after(waits, Replica("Launcher", 0)) == ("Worker",)
    assert MPI_.starts_after(waits, Replica("Worker", 1)) == ()
    assert MPI_.starts_after(PI, Replica("Launcher", 0)) == ()  # AtStartup: all at once


S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_the_launcher_decides() -> None:
    workers = {Replica("Worker", 0): R, Replica("Worker", 1): R}
    assert MPI_.succeeded(PI, {Replica("Launcher", 0): S, **workers}) is True
    assert MPI_.succeeded(PI, {Replica("Launcher", 0): R, Replica("Worker", 0): S, Replica("Worker", 1): S}) is False
    assert MPI_.succeeded(PI, {Replica("Launcher", 0): F, **workers}) is False


def test_two_launchers() -> None:
    path, message = one_problem(make_job(MPI_, {"Launcher": 2, "Worker": 1}))
    assert path == "spec.replicaSpecs.Launcher.replicas"
    assert "2" in message


def test_a_job_without_workers() -> None:
    path, _ = one_problem(make_job(MPI_, {"Launcher": 1, "Worker": 0}))
    assert path == "spec.replicaSpecs.Worker.replicas"


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True, None])
def test_slots_per_worker_must_be_a_positive_integer(value: object) -> None:
    path, _ = one_problem(make_job(MPI_, {"Launcher": 1, "Worker": 1}, options={"slotsPerWorker": value}))
    assert path == "spec.frameworkOptions.slotsPerWorker"


def test_an_unknown_launcher_creation_policy_names_the_allowed_ones() -> None:
    path, message = one_problem(
        make_job(MPI_, {"Launcher": 1, "Worker": 1}, options={"launcherCreationPolicy": "Later"})
    )
    assert path == "spec.frameworkOptions.launcherCreationPolicy"
    assert "'AtStartup' or 'WaitForWorkersReady'" in message


def test_an_unknown_mpi_implementation_names_the_allowed_ones() -> None:
    path, message = one_problem(make_job(MPI_, {"Launcher": 1, "Worker": 1}, options={"mpiImplementation": "MVAPICH"}))
    assert path == "spec.frameworkOptions.mpiImplementation"
    assert "'OpenMPI', 'Intel' or 'MPICH'" in message


def test_run_launcher_as_worker_is_not_offered() -> None:
    path, message = one_problem(make_job(MPI_, {"Launcher": 1, "Worker": 1}, options={"runLauncherAsWorker": True}))
    assert path == "spec.frameworkOptions.runLauncherAsWorker"
    assert "unknown field" in message


@pytest.mark.parametrize("var", sorted(MPI.reserved_env))
def test_every_wired_variable_set_by_the_user_is_rejected(var: str) -> None:
    path, message = one_problem(make_job(MPI_, {"Launcher": 1, "Worker": 1}, env={"Launcher": {var: "x"}}))
    assert path == "spec.replicaSpecs.Launcher.template.spec.containers[0].env[0].name"
    assert var in message


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("mpi"), MPI)
    assert plugins.source("mpi").distribution == "mljob-mpi"


# -- for real: mpirun over the local hostfile, mpi4py's allreduce -----------------------------------------

SCRIPT = textwrap.dedent(
    """
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    print(comm.Get_rank(), comm.Get_size(), comm.allreduce(comm.Get_rank() + 1), flush=True)
    """
)


@pytest.mark.frameworks
def test_mpirun_starts_every_slot_on_this_machine_with_the_local_wiring(tmp_path: Path) -> None:
    mpirun = shutil.which("mpirun")
    assert mpirun is not None, "mpirun is missing: `make setup` installs OpenMPI"
    job = make_job(MPI_, {"Launcher": 1, "Worker": 2}, options={"slotsPerWorker": 2})
    local = MPI_.local_wiring(job, Replica("Launcher", 0), tmp_path)
    for name, content in local.files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "rank.py").write_text(SCRIPT)
    wired = {**MPI_.env(job, Replica("Launcher", 0), ServiceCluster.of(job, MPI_)), **local.env}
    done = subprocess.run(
        [mpirun, "--allow-run-as-root", "-n", "4", sys.executable, str(tmp_path / "rank.py")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **wired},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()) == ["0 4 10", "1 4 10", "2 4 10", "3 4 10"]


def test_a_worker_port_named_ssh_is_passed_to_the_launchers_ssh() -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 2}, ports={"Worker": 2222})
    assert env(job, "Launcher")["OMPI_MCA_plm_rsh_args"] == "-o ConnectionAttempts=10 -p 2222"


# -- the operator's side: the job's ConfigMap and SSH Secret, mounted as the MPI Operator mounts them ---------------


def test_the_job_gets_its_hostfile_config_map_and_ssh_secret() -> None:
    config, secret = MPI_.objects(PI, ServiceCluster.of(PI, MPI_))
    assert config["metadata"]["name"] == "pi-config"
    assert config["data"]["hostfile"] == ("pi-worker-0.pi.hpc.svc slots=2\npi-worker-1.pi.hpc.svc slots=2\n")
    assert (
        config["data"]["discover_hosts.sh"] == "#!/bin/sh\necho pi-worker-0.pi.hpc.svc\necho pi-worker-1.pi.hpc.svc\n"
    )
    assert secret["metadata"]["name"] == "pi-ssh"
    assert secret["type"] == "kubernetes.io/ssh-auth"
    private = base64.b64decode(secret["data"]["ssh-privatekey"])
    public = base64.b64decode(secret["data"]["ssh-publickey"])
    assert private.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    key = serialization.load_pem_private_key(private, password=None)
    mine = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert public == mine + b"\n"
    assert public.startswith(b"ecdsa-sha2-nistp521 ")
    assert b"StrictHostKeyChecking no" in base64.b64decode(secret["data"]["ssh-config"])


def test_every_job_gets_a_key_of_its_own() -> None:
    cluster = ServiceCluster.of(PI, MPI_)
    first, second = MPI_.objects(PI, cluster)[1], MPI_.objects(PI, cluster)[1]
    assert first["data"]["ssh-privatekey"] != second["data"]["ssh-privatekey"]


def test_the_operator_renders_the_objects_and_mounts_them() -> None:
    from mljob.core.reconcile import desire

    plugins = load_plugins(entry_points=False, extra=[mljob_mpi])
    desired = desire(PI, plugins)
    assert desired.ok, desired.problems
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in desired.objects] == [
        ("ConfigMap", "pi-config", "hpc"),
        ("Secret", "pi-ssh", "hpc"),
    ]
    pods = {p["metadata"]["name"]: p for p in desired.pods}
    launcher = pods["pi-launcher-0"]["spec"]
    assert {v["name"]: v for v in launcher["volumes"]} == {
        "ssh-auth": {
            "name": "ssh-auth",
            "secret": {
                "secretName": "pi-ssh",
                "defaultMode": 0o600,
                "items": [
                    {"key": "ssh-privatekey", "path": "id_rsa"},
                    {"key": "ssh-publickey", "path": "id_rsa.pub"},
                    {"key": "ssh-publickey", "path": "authorized_keys"},
                    {"key": "ssh-config", "path": "config"},
                ],
            },
        },
        "mpi-job-config": {
            "name": "mpi-job-config",
            "configMap": {
                "name": "pi-config",
                "items": [
                    {"key": "hostfile", "path": "hostfile", "mode": 0o444},
                    {"key": "discover_hosts.sh", "path": "discover_hosts.sh", "mode": 0o555},
                ],
            },
        },
    }
    assert launcher["containers"][0]["volumeMounts"] == [
        {"name": "ssh-auth", "mountPath": "/root/.ssh"},
        {"name": "mpi-job-config", "mountPath": "/etc/mpi"},
    ]
    worker = pods["pi-worker-1"]["spec"]
    assert [v["name"] for v in worker["volumes"]] == ["ssh-auth"]
    assert worker["containers"][0]["volumeMounts"] == [{"name": "ssh-auth", "mountPath": "/root/.ssh"}]


def test_another_ssh_mount_path_gets_the_secrets_default_mode() -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 1}, name="user", options={"sshAuthMountPath": "/home/mpi/.ssh"})
    children = render(job, MPI_, load_plugins(entry_points=False, extra=[mljob_mpi]))
    pod = next(c for c in children if c["kind"] == "Pod")
    ssh = next(v for v in pod["spec"]["volumes"] if v["name"] == "ssh-auth")
    assert "defaultMode" not in ssh["secret"]
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/home/mpi/.ssh"


def test_a_relative_ssh_mount_path_is_refused_at_its_field() -> None:
    job = make_job(MPI_, {"Launcher": 1, "Worker": 1}, name="rel", options={"sshAuthMountPath": "home/.ssh"})
    path, message = one_problem(job)
    assert path == "spec.frameworkOptions.sshAuthMountPath"
    assert "should match pattern" in message


def test_other_frameworks_pods_are_not_touched() -> None:
    from mljob_pytorch import PyTorch

    job = make_job(PyTorch(), {"Master": 1}, name="torch")
    pod: dict = {"spec": {"containers": [{"name": "pytorch"}]}}
    mljob_mpi.mljob_mutate_pod(job, Replica("Master", 0), pod)
    assert pod == {"spec": {"containers": [{"name": "pytorch"}]}}
