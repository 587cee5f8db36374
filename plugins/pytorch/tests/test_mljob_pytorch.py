"""The PyTorch plugin: the contract, then the variables pinned to exact values for representative jobs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import mljob_pytorch
import pytest
from mljob_pytorch import PyTorch

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, loopback_cluster, make_job
from mljob.plugins import load_plugins

PT = PyTorch()
ELASTIC_POLICY = {
    "minReplicas": 1,
    "maxReplicas": 4,
    "maxRestarts": 3,
    "rdzvConf": [{"key": "read_timeout", "value": "120"}],
}


class TestPyTorchContract(FrameworkContract):
    framework = PT

    def sample_job(self) -> MLJob:
        return make_job(PT, {"Master": 1, "Worker": 2}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [
            self.sample_job(),
            make_job(PT, {"Worker": 3}, name="workers-only", options={"nprocPerNode": "2"}),
            make_job(PT, {"Master": 1}, name="master-only", options={"nprocPerNode": "gpu"}),
            make_job(PT, {"Worker": 3}, name="elastic", options={"elasticPolicy": ELASTIC_POLICY}),
            make_job(
                PT,
                {"Worker": 2},
                name="elastic-etcd",
                options={
                    "elasticPolicy": {"rdzvBackend": "etcd-v2", "rdzvHost": "etcd.example", "rdzvPort": 2379},
                    "nprocPerNode": 2,
                },
            ),
            make_job(
                PT,
                {"Worker": 1},
                name="elastic-named-host",
                options={"elasticPolicy": {"rdzvHost": "rdzv.example", "rdzvPort": 29400, "nProcPerNode": 2}},
            ),
        ]

    def invalid_jobs(self) -> Sequence[MLJob]:
        return [
            make_job(PT, {"Master": 0, "Worker": 2}, name="no-master-replica"),
            make_job(PT, {"Worker": 0}, name="nobody-to-be-rank-0"),
            make_job(PT, {"Worker": 2}, name="bad-nproc", options={"nprocPerNode": "four"}),
            make_job(PT, {"Master": 1, "Worker": 2}, name="elastic-master", options={"elasticPolicy": {}}),
            make_job(PT, {"Worker": 5}, name="elastic-too-many", options={"elasticPolicy": ELASTIC_POLICY}),
            make_job(
                PT,
                {"Worker": 2},
                name="elastic-inverted",
                options={"elasticPolicy": {"minReplicas": 3, "maxReplicas": 2}},
            ),
            make_job(PT, {"Worker": 2}, name="elastic-bad-port", options={"elasticPolicy": {"rdzvPort": 0}}),
        ]


def env(job: MLJob, role: str, index: int) -> Mapping[str, str]:
    return PT.env(job, Replica(role, index), ServiceCluster.of(job, PT))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [
        (p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_pytorch])).problems
    ]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables ----------------------------------------------------------------------------------

MASTER_AND_WORKERS = make_job(PT, {"Master": 1, "Worker": 2}, name="bert", namespace="nlp")


def test_master_gets_rank_0_in_kubeflows_order() -> None:
    assert list(env(MASTER_AND_WORKERS, "Master", 0).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("MASTER_PORT", "23456"),
        ("PET_MASTER_PORT", "23456"),
        ("MASTER_ADDR", "bert-master-0.bert.nlp.svc"),
        ("PET_MASTER_ADDR", "bert-master-0.bert.nlp.svc"),
        ("WORLD_SIZE", "3"),
        ("RANK", "0"),
        ("PET_NPROC_PER_NODE", "auto"),
        ("PET_NODE_RANK", "0"),
        ("PET_NNODES", "3"),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_worker_i_gets_rank_i_plus_1(index: int) -> None:
    assert env(MASTER_AND_WORKERS, "Worker", index) == {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": "23456",
        "PET_MASTER_PORT": "23456",
        "MASTER_ADDR": "bert-master-0.bert.nlp.svc",
        "PET_MASTER_ADDR": "bert-master-0.bert.nlp.svc",
        "WORLD_SIZE": "3",
        "RANK": str(index + 1),
        "PET_NPROC_PER_NODE": "auto",
        "PET_NODE_RANK": str(index + 1),
        "PET_NNODES": "3",
    }


def test_without_a_master_worker_0_coordinates_and_worker_i_has_rank_i() -> None:
    job = make_job(PT, {"Worker": 4}, name="ddp", namespace="default", ports={"Worker": 29500})
    for index in range(4):
        assert env(job, "Worker", index) == {
            "PYTHONUNBUFFERED": "1",
            "MASTER_PORT": "29500",
            "PET_MASTER_PORT": "29500",
            "MASTER_ADDR": "ddp-worker-0.ddp.default.svc",
            "PET_MASTER_ADDR": "ddp-worker-0.ddp.default.svc",
            "WORLD_SIZE": "4",
            "RANK": str(index),
            "PET_NPROC_PER_NODE": "auto",
            "PET_NODE_RANK": str(index),
            "PET_NNODES": "4",
        }


def test_the_masters_named_port_is_the_master_port() -> None:
    job = make_job(PT, {"Master": 1, "Worker": 1}, name="j", ports={"Master": 1234, "Worker": 5678})
    assert env(job, "Worker", 0)["MASTER_PORT"] == env(job, "Worker", 0)["PET_MASTER_PORT"] == "1234"


@pytest.mark.parametrize(
    ("nproc", "world_size", "pet_nproc"),
    [
        (None, "3", "auto"),
        ("auto", "3", "auto"),
        ("cpu", "3", "cpu"),
        ("gpu", "3", "gpu"),
        ("8", "24", "8"),
        (4, "12", "4"),
    ],
)
def test_world_size_counts_processes_when_nproc_per_node_is_a_number(
    nproc: str | int | None, world_size: str, pet_nproc: str
) -> None:
    job = make_job(PT, {"Master": 1, "Worker": 2}, options={} if nproc is None else {"nprocPerNode": nproc})
    for replica in replicas_of(job):
        wired = env(job, replica.role, replica.index)
        assert (wired["WORLD_SIZE"], wired["PET_NPROC_PER_NODE"], wired["PET_NNODES"]) == (world_size, pet_nproc, "3")


def test_local_addresses_use_the_masters_own_port() -> None:
    job = make_job(PT, {"Master": 1, "Worker": 2})
    wired = PT.env(job, Replica("Worker", 1), FakeCluster(job, style="ip"))
    assert (wired["MASTER_ADDR"], wired["MASTER_PORT"]) == ("198.18.0.1", "40101")


# -- rendering ----------------------------------------------------------------------------------------


def leaders(job: MLJob) -> list[str]:
    return [
        pod["metadata"]["name"]
        for pod in render(job, PT)
        if pod["kind"] == "Pod" and pod["metadata"]["labels"].get("mljob.io/leader") == "true"
    ]


def test_the_master_leads() -> None:
    assert leaders(make_job(PT, {"Master": 1, "Worker": 3}, name="j")) == ["j-master-0"]


def test_worker_0_leads_without_a_master() -> None:
    assert leaders(make_job(PT, {"Worker": 3}, name="j")) == ["j-worker-0"]


def test_pods_default_to_kubeflows_restart_policy_on_failure() -> None:
    pods = [p for p in render(make_job(PT, {"Master": 1, "Worker": 1}), PT) if p["kind"] == "Pod"]
    assert {p["spec"]["restartPolicy"] for p in pods} == {"OnFailure"}


def test_the_pytorchjob_port_name_is_used_for_the_default_port() -> None:
    pod = render(make_job(PT, {"Worker": 2}), PT)[0]
    assert pod["spec"]["containers"][0]["ports"] == [
        {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}
    ]


# -- the success rule ---------------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_the_master_decides() -> None:
    job = make_job(PT, {"Master": 1, "Worker": 2})
    assert PT.succeeded(job, {Replica("Master", 0): S, Replica("Worker", 0): R, Replica("Worker", 1): F}) is True
    assert PT.succeeded(job, {Replica("Master", 0): R, Replica("Worker", 0): S, Replica("Worker", 1): S}) is False


def test_without_a_master_every_worker_must_succeed() -> None:
    job = make_job(PT, {"Worker": 2})
    assert PT.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): R}) is False
    assert PT.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): S}) is True


# -- validation through the core --------------------------------------------------------------------------


def test_two_masters() -> None:
    path, message = one_problem(make_job(PT, {"Master": 2, "Worker": 1}))
    assert path == "spec.replicaSpecs.Master.replicas"
    assert "at most 1 Master" in message
    assert "2" in message


def test_a_master_with_no_replica() -> None:
    assert one_problem(make_job(PT, {"Master": 0, "Worker": 2})) == (
        "spec.replicaSpecs.Master.replicas",
        "a Master has exactly 1 replica, got 0; leave Master out to let worker 0 coordinate",
    )


def test_no_master_and_no_workers() -> None:
    assert one_problem(make_job(PT, {"Worker": 0})) == (
        "spec.replicaSpecs.Worker.replicas",
        "a PyTorch job without a Master needs a Worker",
    )


@pytest.mark.parametrize("var", sorted(PyTorch.reserved_env))
def test_every_wired_variable_set_by_the_user_is_rejected(var: str) -> None:
    path, message = one_problem(make_job(PT, {"Master": 1, "Worker": 1}, env={"Worker": {var: "x"}}))
    assert path == "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"
    assert var in message
    assert "pytorch" in message


@pytest.mark.parametrize("value", ["4", 4, "auto", "cpu", "gpu"])
def test_nproc_per_node_accepts_kubeflows_values(value: str | int) -> None:
    assert problems(make_job(PT, {"Worker": 2}, options={"nprocPerNode": value})) == []


@pytest.mark.parametrize("value", ["0", 0, -1, "four", "4.5", True, None])
def test_nproc_per_node_rejects_anything_else(value: object) -> None:
    assert one_problem(make_job(PT, {"Worker": 2}, options={"nprocPerNode": value})) == (
        "spec.frameworkOptions.nprocPerNode",
        f'must be "auto", "cpu", "gpu" or a positive integer, got {value!r}',
    )


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("pytorch"), PyTorch)
    assert plugins.source("pytorch").distribution == "mljob-pytorch"


# -- for real: torch.distributed on 127.0.0.1, one port per replica ------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import os, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    print(os.environ["RANK"], dist.get_world_size(), int(t.item()))
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.frameworks
@pytest.mark.parametrize("roles", [{"Master": 1, "Worker": 2}, {"Worker": 3}])
def test_torch_distributed_initialises_with_the_wiring(roles: dict[str, int], tmp_path: Path) -> None:
    job = make_job(PT, roles, options={"nprocPerNode": "1"})
    cluster = loopback_cluster(job)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={"PATH": "/usr/bin:/bin", **PT.env(job, replica, cluster)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for replica in replicas_of(job)
    ]
    outputs = sorted(proc.communicate(timeout=120)[0].strip() for proc in procs)
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert outputs == ["0 3 6", "1 3 6", "2 3 6"]
