"""Elastic PyTorch (``frameworkOptions.elasticPolicy``): torchrun's variables pinned to exact values, none of them
depending on the Worker count, the policy's problems, :meth:`PyTorch.elastic`, the success rule, the local wiring,
and torchrun's agents meeting for real through ``mljob run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mljob_pytorch
import pytest
import yaml
from mljob_pytorch import PyTorch

from mljob import Elastic, LocalWiring, MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.local.cluster import free_ports
from mljob.plugin_testing import FakeCluster, loopback_cluster, make_job
from mljob.plugins import load_plugins

PT = PyTorch()
POLICY = {"minReplicas": 1, "maxReplicas": 4, "maxRestarts": 3, "rdzvConf": [{"key": "read_timeout", "value": "120"}]}
ELASTIC = "spec.frameworkOptions.elasticPolicy"


def elastic_job(workers: int, policy: Mapping[str, Any] | None = None, **options: Any) -> MLJob:
    return make_job(
        PT,
        {"Worker": workers},
        name="bert",
        namespace="nlp",
        options={"elasticPolicy": dict(POLICY if policy is None else policy), **options},
    )


def env(job: MLJob, index: int) -> dict[str, str]:
    return dict(PT.env(job, Replica("Worker", index), ServiceCluster.of(job, PT)))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [
        (p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_pytorch])).problems
    ]


# -- the variables ----------------------------------------------------------------------------------------------


def test_worker_1_of_3_gets_torchruns_elastic_variables_in_kubeflows_order() -> None:
    assert list(env(elastic_job(3), 1).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PET_NPROC_PER_NODE", "auto"),
        ("PET_RDZV_ENDPOINT", "bert-worker-0.bert.nlp.svc:23456"),
        ("PET_RDZV_BACKEND", "c10d"),
        ("PET_NNODES", "1:4"),
        ("PET_MAX_RESTARTS", "3"),
        ("PET_RDZV_ID", "bert"),
        ("PET_RDZV_CONF", "read_timeout=120,is_host=0"),
        ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),  # a replacement or a new worker could not join: see the module
    ]


def test_worker_0_hosts_the_c10d_store() -> None:
    assert env(elastic_job(3), 0)["PET_RDZV_CONF"] == "read_timeout=120,is_host=1"


POLICIES = [
    POLICY,
    {"minReplicas": 2, "maxReplicas": 3},
    {"maxReplicas": 3, "rdzvPort": 29400, "rdzvId": "run-7"},
    {"minReplicas": 1, "maxReplicas": 8, "rdzvBackend": "etcd", "rdzvHost": "etcd.example", "nProcPerNode": 2},
]


@pytest.mark.parametrize("policy", POLICIES)
def test_no_variable_depends_on_the_worker_count(policy: Mapping[str, Any]) -> None:
    """``kubectl scale`` changes the count under running pods: their wiring must be the same either way."""
    low, high = policy.get("minReplicas", policy.get("maxReplicas")), policy.get("maxReplicas")
    counts = [n for n in (2, 3) if low <= n <= high] if policy.get("minReplicas") else [high]
    small, large = elastic_job(counts[0], policy), elastic_job(counts[-1], policy)
    for index in range(counts[0]):
        assert env(small, index) == env(large, index)
        assert {"WORLD_SIZE", "RANK", "PET_NODE_RANK", "MASTER_ADDR", "MASTER_PORT"}.isdisjoint(env(small, index))
    rendered = {
        n: {p["metadata"]["name"]: p["spec"]["containers"][0]["env"] for p in render(job, PT) if p["kind"] == "Pod"}
        for n, job in ((counts[0], small), (counts[-1], large))
    }
    for name, wired in rendered[counts[0]].items():
        assert rendered[counts[-1]][name] == wired, name


def test_scaling_2_to_3_keeps_every_pod_the_same() -> None:
    two, three = elastic_job(2), elastic_job(3)
    pods = {n: [p for p in render(j, PT) if p["kind"] == "Pod"] for n, j in ((2, two), (3, three))}
    assert pods[3][:2] == pods[2]
    assert [p["metadata"]["name"] for p in pods[3]] == ["bert-worker-0", "bert-worker-1", "bert-worker-2"]


@pytest.mark.parametrize(
    ("policy", "workers", "nnodes"),
    [
        ({}, 3, "3:3"),  # Kubeflow's setElasticPolicy: neither bound, both the Worker count
        ({"minReplicas": 2}, 2, "2:2"),  # one bound, the other the same
        ({"maxReplicas": 4}, 4, "4:4"),
        ({"minReplicas": 2, "maxReplicas": 5}, 3, "2:5"),
    ],
)
def test_bounds_default_as_kubeflows_defaulter_sets_them(policy: dict[str, Any], workers: int, nnodes: str) -> None:
    job = elastic_job(workers, policy)
    assert problems(job) == []
    assert env(job, 0)["PET_NNODES"] == nnodes
    low, high = (int(x) for x in nnodes.split(":"))
    assert PT.elastic(job) == Elastic("Worker", low, high)


def test_a_minimal_policy_is_kubeflows_minimal_elastic_env() -> None:
    assert env(elastic_job(2, {}), 1) == {
        "PYTHONUNBUFFERED": "1",
        "PET_NPROC_PER_NODE": "auto",
        "PET_RDZV_ENDPOINT": "bert-worker-0.bert.nlp.svc:23456",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "2:2",
        "PET_RDZV_ID": "bert",
        "PET_RDZV_CONF": "is_host=0",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }


def test_the_named_worker_port_is_the_rendezvous_port() -> None:
    job = make_job(PT, {"Worker": 2}, name="j", ports={"Worker": 29500}, options={"elasticPolicy": {}})
    assert env(job, 1)["PET_RDZV_ENDPOINT"] == "j-worker-0.j.default.svc:29500"


def test_a_given_host_port_id_and_backend_are_used_as_given_and_torchrun_guesses_the_host() -> None:
    policy = {"rdzvBackend": "etcd-v2", "rdzvHost": "etcd.example", "rdzvPort": 2379, "rdzvId": "shared"}
    wired = env(elastic_job(2, policy), 0)
    assert (wired["PET_RDZV_ENDPOINT"], wired["PET_RDZV_BACKEND"], wired["PET_RDZV_ID"]) == (
        "etcd.example:2379",
        "etcd-v2",
        "shared",
    )
    assert "PET_RDZV_CONF" not in wired  # no is_host: mljob does not know who hosts a named rendezvous


def test_a_host_without_a_port_takes_the_worker_port() -> None:
    assert env(elastic_job(2, {"rdzvHost": "rdzv.example"}), 1)["PET_RDZV_ENDPOINT"] == "rdzv.example:23456"


def test_the_users_is_host_wins_and_an_empty_conf_writes_only_mljobs() -> None:
    conf = [{"key": "is_host", "value": "false"}, {"key": "join_timeout", "value": "60"}]
    assert env(elastic_job(2, {"rdzvConf": conf}), 0)["PET_RDZV_CONF"] == "is_host=false,join_timeout=60"
    assert env(elastic_job(2, {"rdzvConf": []}), 0)["PET_RDZV_CONF"] == "is_host=1"


def test_the_deprecated_n_proc_per_node_takes_kubeflows_place_in_the_order() -> None:
    wired = env(elastic_job(2, {"maxRestarts": 5, "nProcPerNode": 2}), 1)
    assert list(wired)[3:7] == ["PET_NNODES", "PET_MAX_RESTARTS", "PET_NPROC_PER_NODE", "PET_RDZV_ID"]
    assert wired["PET_NPROC_PER_NODE"] == "2"
    assert env(elastic_job(2, {}, nprocPerNode="gpu"), 1)["PET_NPROC_PER_NODE"] == "gpu"


def test_every_address_comes_from_the_cluster() -> None:
    job = elastic_job(3)
    cluster = FakeCluster(job, style="ip")
    wired = PT.env(job, Replica("Worker", 2), cluster)
    assert cluster.asked == [Replica("Worker", 0)]
    assert wired["PET_RDZV_ENDPOINT"] == "198.18.0.1:40101"


# -- elastic() and the success rule ------------------------------------------------------------------------------


def test_elastic_says_the_workers_and_their_bounds() -> None:
    assert PT.elastic(elastic_job(3)) == Elastic("Worker", 1, 4)
    assert PT.elastic(make_job(PT, {"Worker": 3})) is None
    assert PT.elastic(make_job(PT, {"Master": 1, "Worker": 3})) is None


S, R, P, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.PENDING, Outcome.FAILED


@pytest.mark.parametrize(
    ("outcomes", "succeeded"),
    [
        ((S, R, R), True),  # torchrun's agents finish together; Kubeflow: any worker succeeded
        ((R, S, P), True),
        ((S, S, S), True),
        ((F, S, S), False),  # worker 0 hosts the rendezvous
        ((S, F, R), True),  # a lost worker is not the job's failure
        ((R, R, R), False),
        ((F, F, F), False),
    ],
)
def test_an_elastic_job_succeeded_when_a_worker_did(outcomes: tuple[Outcome, ...], succeeded: bool) -> None:
    job = elastic_job(3)
    assert PT.succeeded(job, {Replica("Worker", i): o for i, o in enumerate(outcomes)}) is succeeded


def test_a_worker_beyond_the_count_still_counts_after_a_scale_down() -> None:
    assert PT.succeeded(elastic_job(2), {Replica("Worker", 0): R, Replica("Worker", 3): S}) is True


# -- validation -------------------------------------------------------------------------------------------------------


def test_an_elastic_job_has_no_master() -> None:
    job = make_job(PT, {"Master": 1, "Worker": 2}, options={"elasticPolicy": {"minReplicas": 1, "maxReplicas": 3}})
    assert problems(job) == [
        (
            "spec.replicaSpecs.Master",
            "an elastic job (frameworkOptions.elasticPolicy) has Workers only: torchrun's rendezvous assigns every "
            "rank, so there is no Master; leave it out (worker 0 hosts the rendezvous)",
        )
    ]


@pytest.mark.parametrize(
    ("workers", "policy", "expected"),
    [
        (5, POLICY, ("spec.replicaSpecs.Worker.replicas",
                     "must be within the elastic policy's minReplicas (1) and maxReplicas (4), got 5")),
        (1, {"minReplicas": 2, "maxReplicas": 4}, ("spec.replicaSpecs.Worker.replicas",
                                                   "must be within the elastic policy's minReplicas (2) and "
                                                   "maxReplicas (4), got 1")),
        (3, {"minReplicas": 2}, ("spec.replicaSpecs.Worker.replicas",
                                 "must be 2: the elastic policy sets minReplicas (2) and not maxReplicas, which is "
                                 "then the same, as in Kubeflow; got 3")),
        (0, {}, ("spec.replicaSpecs.Worker.replicas",
                 "an elastic job (frameworkOptions.elasticPolicy) needs at least 1 Worker, got 0")),
        (2, {"minReplicas": 3, "maxReplicas": 2}, (f"{ELASTIC}.maxReplicas",
                                                   "must be at least minReplicas (3), got 2")),
        (2, {"minReplicas": 0}, (f"{ELASTIC}.minReplicas", "must be at least 1, got 0")),
        (2, {"maxReplicas": "4"}, (f"{ELASTIC}.maxReplicas",
                                   "must be an integer, got '4' (quoted, so a string: remove the quotes)")),
        (2, {"rdzvPort": 0}, (f"{ELASTIC}.rdzvPort", "must be a port, 1 to 65535, got 0")),
        (2, {"rdzvPort": 65536}, (f"{ELASTIC}.rdzvPort", "must be a port, 1 to 65535, got 65536")),
        (2, {"rdzvBackend": "static"}, (f"{ELASTIC}.rdzvBackend",
                                        "must be one of 'c10d', 'etcd' or 'etcd-v2'; got 'static'")),
        (2, {"maxRestarts": -1}, (f"{ELASTIC}.maxRestarts", "must be at least 0, got -1")),
        (2, {"rdzvHost": ""}, (f"{ELASTIC}.rdzvHost", "must not be empty")),
        (2, {"rdzvConf": [{"key": "a=b", "value": "1"}]}, (f"{ELASTIC}.rdzvConf[0].key",
                                                           "must be a non-empty name without \"=\" or \",\", got "
                                                           "'a=b'")),
        (2, {"rdzvConf": [{"key": "a", "value": "1,2"}]}, (f"{ELASTIC}.rdzvConf[0].value",
                                                           "must be non-empty and without \",\", got '1,2'")),
        (2, {"standalone": True}, (f"{ELASTIC}.standalone", "unknown field")),
        (2, {"metrics": []}, (f"{ELASTIC}.metrics", "unknown field")),
    ],
)  # fmt: skip
def test_the_policys_problems(workers: int, policy: dict[str, Any], expected: tuple[str, str]) -> None:
    assert problems(elastic_job(workers, policy)) == [expected]


def test_the_deprecated_n_proc_per_node_alone_is_accepted_but_not_with_nproc_per_node() -> None:
    assert problems(elastic_job(2, {"nProcPerNode": 2})) == []
    assert problems(elastic_job(2, {"nProcPerNode": 2}, nprocPerNode="auto")) == [
        (
            f"{ELASTIC}.nProcPerNode",
            "must not be used with spec.frameworkOptions.nprocPerNode (nProcPerNode is deprecated, as in Kubeflow: "
            "keep nprocPerNode)",
        )
    ]


@pytest.mark.parametrize(
    "var",
    ["PET_RDZV_ENDPOINT", "PET_RDZV_BACKEND", "PET_RDZV_ID", "PET_RDZV_CONF", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"],
)
def test_the_rendezvous_variables_are_the_plugins(var: str) -> None:
    job = make_job(PT, {"Worker": 2}, env={"Worker": {var: "x"}}, options={"elasticPolicy": {}})
    ((path, message),) = problems(job)
    assert path == "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"
    assert var in message


# -- mljob run -----------------------------------------------------------------------------------------------------


def test_locally_the_rendezvous_is_worker_0s_local_address_as_the_cluster_gives_it() -> None:
    job = elastic_job(3)
    folder = Path("/nonexistent")
    assert all(PT.local_wiring(job, Replica("Worker", i), folder) == LocalWiring() for i in range(3))


def test_locally_a_named_c10d_host_becomes_127_0_0_1_with_worker_0_hosting() -> None:
    job = elastic_job(2, {"rdzvHost": "bert-worker-0", "rdzvPort": 29400})
    folder = Path("/nonexistent")
    assert PT.local_wiring(job, Replica("Worker", 0), folder).env == {
        "PET_RDZV_ENDPOINT": "127.0.0.1:29400",
        "PET_RDZV_CONF": "is_host=1",
    }
    assert PT.local_wiring(job, Replica("Worker", 1), folder).env["PET_RDZV_CONF"] == "is_host=0"


def test_locally_a_named_c10d_host_needs_its_port() -> None:
    with pytest.raises(ValueError, match="set rdzvPort too"):
        PT.local_wiring(elastic_job(2, {"rdzvHost": "bert-worker-0"}), Replica("Worker", 0), Path("/nonexistent"))


def test_locally_an_etcd_server_is_left_where_it_is() -> None:
    job = elastic_job(2, {"rdzvBackend": "etcd", "rdzvHost": "etcd.example", "rdzvPort": 2379})
    assert PT.local_wiring(job, Replica("Worker", 0), Path("/nonexistent")) == LocalWiring()


SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    # One write: the replica's output is unbuffered (PYTHONUNBUFFERED), and print() writes each part apart.
    sys.stdout.write(f"RESULT {os.environ['TORCHELASTIC_RUN_ID']} {dist.get_world_size()} {int(t.item())}\\n")
    dist.destroy_process_group()
    """
)


@pytest.mark.frameworks
@pytest.mark.parametrize("named_host", [False, True])
def test_torchruns_agents_meet_through_mljob_run(named_host: bool, tmp_path: Path) -> None:
    """Two workers under ``mljob run``, each a torchrun agent with two processes: the rendezvous forms a group of
    four, whatever ``rdzvHost`` says for a cluster."""
    policy: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "maxRestarts": 1,
        "rdzvConf": [{"key": "last_call_timeout", "value": "1"}],  # not 30 s of waiting for a third worker
    }
    if named_host:
        policy |= {"rdzvHost": "elastic-run-worker-0", "rdzvPort": free_ports(1)[0]}
    (tmp_path / "train.py").write_text(SCRIPT)
    container = {
        "name": "pytorch",
        "image": "pytorch/pytorch:2.5.1-cpu",
        "command": [sys.executable, "-m", "torch.distributed.run"],
        "args": ["train.py"],
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }
    job = {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "elastic-run"},
        "spec": {
            "framework": "pytorch",
            "frameworkOptions": {"nprocPerNode": 2, "elasticPolicy": policy},
            "replicaSpecs": {"Worker": {"replicas": 2, "template": {"spec": {"containers": [container]}}}},
            "runPolicy": {"activeDeadlineSeconds": 180},
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    mljob = Path(sys.executable).parent / "mljob"
    done = subprocess.run(
        [str(mljob), "run", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_COLOR": "1"},
    )
    results = [line.split("RESULT", 1)[1].split() for line in done.stdout.splitlines() if "RESULT" in line]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results, done.stdout[-3000:]
    assert results == [["elastic-run", "4", "4"]] * 4, results


GROW = textwrap.dedent(
    """
    import os, sys, time, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    sys.stdout.write(f"WORLD {world}\\n")
    if world < 3:
        time.sleep(120)  # until the agent restarts us for the new member
        sys.exit(1)
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    sys.stdout.write(f"RESULT {int(t.item())}\\n")
    dist.destroy_process_group()
    """
)


@pytest.mark.frameworks
def test_a_worker_that_comes_later_joins_the_running_group(tmp_path: Path) -> None:
    """A scale-up (or a lost worker's replacement): two agents form a group of two, a third arrives and the group
    re-forms as three, in place, without an agent failing (with torch's shared rendezvous store it would wait 60 s
    for a key nobody writes, then every agent would fail: TORCH_DISABLE_SHARE_RDZV_TCP_STORE)."""
    policy = {
        "minReplicas": 2,
        "maxReplicas": 3,
        "maxRestarts": 2,
        "rdzvConf": [{"key": "last_call_timeout", "value": "1"}],
    }
    job = make_job(PT, {"Worker": 3}, name="grow", options={"elasticPolicy": policy, "nprocPerNode": 1})
    cluster = loopback_cluster(job)
    (tmp_path / "grow.py").write_text(GROW)
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]

    def start(index: int) -> subprocess.Popen[bytes]:
        wiring = PT.env(job, Replica("Worker", index), cluster)
        env = {"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1", **wiring}
        with logs[index].open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "grow.py"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    procs = [start(0), start(1)]
    try:
        deadline = time.monotonic() + 60
        while not all("WORLD 2" in log.read_text() for log in logs[:2]):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs[:2]]
            time.sleep(0.2)
        started = time.monotonic()
        procs.append(start(2))
        codes = [proc.wait(timeout=90) for proc in procs]
        joined = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], [text[-2000:] for text in texts]
    assert [text.count("RESULT 3") for text in texts] == [1, 1, 1], texts
    assert joined < 50, f"the new worker took {joined:.0f} s to join"  # torch's 60 s store timeout never fired
