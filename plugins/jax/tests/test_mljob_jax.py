"""The JAX plugin: the contract, the variables pinned to exact values, rendering, validation, success,
then ``jax.distributed`` initialised for real from the wiring (both Kubeflow formats)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import mljob_jax
import pytest
from mljob_jax import Jax

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, loopback_cluster, make_job
from mljob.plugins import load_plugins

JAX = Jax()


class TestJaxContract(FrameworkContract):
    framework = JAX

    def sample_job(self) -> MLJob:
        return make_job(JAX, {"Worker": 3}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [self.sample_job(), make_job(JAX, {"Worker": 1}, name="one-process")]


def env(job: MLJob, index: int) -> Mapping[str, str]:
    return JAX.env(job, Replica("Worker", index), ServiceCluster.of(job, JAX))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_jax])).problems]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables ----------------------------------------------------------------------------------

THREE = make_job(JAX, {"Worker": 3}, name="lm", namespace="research")


def test_worker_0_is_process_0_and_the_coordinator_in_kubeflows_order() -> None:
    assert list(env(THREE, 0).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("COORDINATOR_PORT", "6666"),
        ("COORDINATOR_ADDRESS", "lm-worker-0.lm.research.svc"),
        ("NUM_PROCESSES", "3"),
        ("PROCESS_ID", "0"),
        ("JAX_NUM_PROCESSES", "3"),
        ("JAX_PROCESS_ID", "0"),
        ("JAX_COORDINATOR_ADDRESS", "lm-worker-0.lm.research.svc:6666"),
        ("JAX_COORDINATOR_PORT", "6666"),
        ("JAX_DISTRIBUTED_BACKEND", "gloo"),
    ]


@pytest.mark.parametrize("index", [1, 2])
def test_worker_i_is_process_i(index: int) -> None:
    assert env(THREE, index) == {
        "PYTHONUNBUFFERED": "1",
        "COORDINATOR_PORT": "6666",
        "COORDINATOR_ADDRESS": "lm-worker-0.lm.research.svc",
        "NUM_PROCESSES": "3",
        "PROCESS_ID": str(index),
        "JAX_NUM_PROCESSES": "3",
        "JAX_PROCESS_ID": str(index),
        "JAX_COORDINATOR_ADDRESS": "lm-worker-0.lm.research.svc:6666",
        "JAX_COORDINATOR_PORT": "6666",
        "JAX_DISTRIBUTED_BACKEND": "gloo",
    }


def test_the_jaxjob_port_overrides_the_coordinator_port() -> None:
    job = make_job(JAX, {"Worker": 2}, name="j", ports={"Worker": 1234})
    wired = env(job, 1)
    assert (wired["COORDINATOR_PORT"], wired["JAX_COORDINATOR_PORT"]) == ("1234", "1234")
    assert wired["JAX_COORDINATOR_ADDRESS"] == "j-worker-0.j.default.svc:1234"


def test_a_local_run_points_every_process_at_worker_0s_own_port() -> None:
    job = make_job(JAX, {"Worker": 3})
    cluster = FakeCluster(job, style="ip")
    for replica in replicas_of(job):
        wired = JAX.env(job, replica, cluster)
        assert (wired["JAX_COORDINATOR_ADDRESS"], wired["COORDINATOR_ADDRESS"]) == ("198.18.0.1:40101", "198.18.0.1")


# -- rendering ----------------------------------------------------------------------------------------


def test_worker_0_leads_and_pods_default_to_kubeflows_restart_policy_never() -> None:
    objects = render(make_job(JAX, {"Worker": 3}, name="j"), JAX)
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("mljob.io/leader") == "true"] == [
        "j-worker-0"
    ]
    assert {p["spec"]["restartPolicy"] for p in pods} == {"Never"}
    assert pods[0]["spec"]["containers"][0]["ports"] == [
        {"name": "jaxjob-port", "containerPort": 6666, "protocol": "TCP"}
    ]
    wired = {e["name"]: e["value"] for e in pods[2]["spec"]["containers"][0]["env"]}
    assert wired["JAX_COORDINATOR_ADDRESS"] == "j-worker-0.j.default.svc:6666"
    assert wired["JAX_PROCESS_ID"] == "2"


def test_the_wiring_goes_to_the_jax_container_of_several() -> None:
    template = {
        "spec": {
            "containers": [
                {"name": "sidecar", "image": "busybox"},
                {"name": "jax", "image": "train:1", "env": [{"name": "STEPS", "value": "10"}]},
            ]
        }
    }
    job = make_job(JAX, {"Worker": {"replicas": 2, "template": template}})
    pod = render(job, JAX)[1]
    sidecar, jax = pod["spec"]["containers"]
    assert "env" not in sidecar
    assert {e["name"] for e in jax["env"]} == {"STEPS", *Jax.reserved_env}


# -- the success rule ---------------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_every_worker_must_succeed() -> None:
    job = make_job(JAX, {"Worker": 3})
    assert JAX.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): S, Replica("Worker", 2): R}) is False
    assert JAX.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): F, Replica("Worker", 2): S}) is False
    assert JAX.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): S}) is False  # one never reported
    assert JAX.succeeded(job, dict.fromkeys(replicas_of(job), S)) is True


# -- validation through the core ----------------------------------------------------------------------


def test_no_worker_is_refused_at_the_replica_count() -> None:
    assert one_problem(make_job(JAX, {"Worker": 0})) == (
        "spec.replicaSpecs.Worker.replicas",
        "jax needs at least 1 Worker, got 0",
    )


def test_a_role_jax_does_not_have() -> None:
    assert one_problem(make_job(JAX, {"Master": 1, "Worker": 2})) == (
        "spec.replicaSpecs.Master",
        "unknown role 'Master' for framework 'jax' (roles: Worker)",
    )


@pytest.mark.parametrize("var", sorted(Jax.reserved_env))
def test_every_wired_variable_set_by_the_user_is_rejected(var: str) -> None:
    path, message = one_problem(make_job(JAX, {"Worker": 2}, env={"Worker": {var: "x"}}))
    assert path == "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"
    assert message == f"{var} is set by the jax framework; remove it"


def test_jax_takes_no_options() -> None:
    assert one_problem(make_job(JAX, {"Worker": 2}, options={"backend": "mpi"})) == (
        "spec.frameworkOptions.backend",
        "unknown field",
    )


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("jax"), Jax)
    assert plugins.source("jax").distribution == "mljob-jax"


# -- for real: jax.distributed on 127.0.0.1, one port per replica ----------------------------------------

PREAMBLE = """
import os
import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from jax.experimental import multihost_utils
"""
SCRIPTS = {
    # Kubeflow Trainer v2's names; jax.distributed.initialize reads JAX_COORDINATOR_ADDRESS itself.
    "trainer-v2": """
    jax.distributed.initialize(
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]), process_id=int(os.environ["JAX_PROCESS_ID"])
    )
    """,
    # training-operator v1's names, as its examples/jax/cpu-demo/train.py reads them.
    "jaxjob-v1": """
    jax.distributed.initialize(
        coordinator_address=os.environ["COORDINATOR_ADDRESS"] + ":" + os.environ["COORDINATOR_PORT"],
        num_processes=int(os.environ["NUM_PROCESSES"]),
        process_id=int(os.environ["PROCESS_ID"]),
    )
    """,
}
GATHER = """
ranks = multihost_utils.process_allgather(jax.numpy.array([jax.process_index()]))
print(jax.process_index(), jax.process_count(), int(ranks.sum()), flush=True)
jax.distributed.shutdown()
"""


@pytest.mark.frameworks
@pytest.mark.parametrize(("names", "workers"), [("trainer-v2", 3), ("jaxjob-v1", 2)])
def test_jax_distributed_initialises_with_the_wiring(names: str, workers: int, tmp_path: Path) -> None:
    job = make_job(JAX, {"Worker": workers})
    cluster = loopback_cluster(job)
    script = tmp_path / "init.py"
    script.write_text(PREAMBLE + textwrap.dedent(SCRIPTS[names]) + GATHER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={"PATH": "/usr/bin:/bin", **JAX.env(job, replica, cluster)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for replica in replicas_of(job)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * workers, [err[-2000:] for _, err in results]
    total = sum(range(workers))
    lines = [out.strip().splitlines()[-1] for out, _ in results]  # gloo prints to stdout too; ours is last
    assert sorted(lines) == [f"{i} {workers} {total}" for i in range(workers)]
