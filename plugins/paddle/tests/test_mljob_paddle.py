"""The Paddle plugin: the contract, the variables pinned to exact values (Kubeflow's PaddleJob, both of its
modes), Kubeflow's downward-API form of the rendezvous pod, rendering, validation, success, then paddle's
launcher forming a collective for real from the wiring."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mljob_paddle
import pytest
from mljob_paddle import Paddle

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.schema import object_problems
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import Coordinated, FakeCluster, FrameworkContract, loopback_cluster, make_job, plugins_for
from mljob.plugins import load_plugins

PADDLE = Paddle()


class TestPaddleContract(FrameworkContract):
    framework = PADDLE

    def sample_job(self) -> MLJob:
        return make_job(PADDLE, {"Worker": 3}, name="contract-job", namespace="contract-ns")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [
            self.sample_job(),
            make_job(PADDLE, {"Master": 1, "Worker": 2}, name="ps-mode"),
            make_job(PADDLE, {"Master": 2, "Worker": 3}, name="two-servers"),
            make_job(PADDLE, {"Master": 1}, name="master-only"),
            make_job(PADDLE, {"Worker": 1}, name="one-node"),
        ]

    def invalid_jobs(self) -> Sequence[MLJob]:
        return [make_job(PADDLE, {"Worker": 0}), make_job(PADDLE, {"Master": 0, "Worker": 0})]


def env(job: MLJob, role: str, index: int) -> Mapping[str, str]:
    return PADDLE.env(job, Replica(role, index), ServiceCluster.of(job, PADDLE))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [
        (p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_paddle])).problems
    ]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables: collective mode (no Master), worker 0 is the rendezvous ---------------------------------

COLLECTIVE = make_job(PADDLE, {"Worker": 3}, name="ocr", namespace="vision")
WORKER_0 = "ocr-worker-0.ocr.vision.svc"


def test_worker_0_hosts_the_rendezvous_in_kubeflows_order() -> None:
    assert list(env(COLLECTIVE, "Worker", 0).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PADDLE_JOB_ID", "ocr"),
        ("PADDLE_NNODES", "3"),
        ("POD_IP_DUMMY", WORKER_0),
        ("PADDLE_MASTER", f"{WORKER_0}:36543"),
    ]


@pytest.mark.parametrize("index", [1, 2])
def test_the_other_workers_point_at_worker_0(index: int) -> None:
    assert list(env(COLLECTIVE, "Worker", index).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PADDLE_JOB_ID", "ocr"),
        ("PADDLE_NNODES", "3"),
        ("PADDLE_MASTER", f"{WORKER_0}:36543"),
    ]


def test_one_worker_is_its_own_rendezvous() -> None:
    job = make_job(PADDLE, {"Worker": 1}, name="solo")
    wired = env(job, "Worker", 0)
    assert (wired["PADDLE_NNODES"], wired["PADDLE_MASTER"]) == ("1", "solo-worker-0.solo.default.svc:36543")


# -- the variables: parameter-server mode (a Master), master 0 is the rendezvous ---------------------------

PS = make_job(PADDLE, {"Master": 2, "Worker": 2}, name="ctr", namespace="ads")
MASTER_0 = "ctr-master-0.ctr.ads.svc"


def test_master_0_hosts_the_rendezvous_and_runs_one_server() -> None:
    assert list(env(PS, "Master", 0).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PADDLE_JOB_ID", "ctr"),
        ("PADDLE_NNODES", "4"),  # every replica of every role
        ("POD_IP_DUMMY", MASTER_0),
        ("PADDLE_MASTER", f"{MASTER_0}:36543"),
        ("PADDLE_SERVER_NUM", "1"),
    ]


def test_another_master_runs_one_server_and_points_at_master_0() -> None:
    assert list(env(PS, "Master", 1).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PADDLE_JOB_ID", "ctr"),
        ("PADDLE_NNODES", "4"),
        ("PADDLE_MASTER", f"{MASTER_0}:36543"),
        ("PADDLE_SERVER_NUM", "1"),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_every_worker_runs_one_trainer_and_points_at_master_0(index: int) -> None:
    assert list(env(PS, "Worker", index).items()) == [
        ("PYTHONUNBUFFERED", "1"),
        ("PADDLE_JOB_ID", "ctr"),
        ("PADDLE_NNODES", "4"),
        ("PADDLE_MASTER", f"{MASTER_0}:36543"),
        ("PADDLE_TRAINER_NUM", "1"),
    ]


def test_a_master_with_no_replica_is_no_master() -> None:
    job = make_job(PADDLE, {"Master": 0, "Worker": 2}, name="ocr", namespace="vision")
    assert problems(job) == []
    assert env(job, "Worker", 1) == {
        "PYTHONUNBUFFERED": "1",
        "PADDLE_JOB_ID": "ocr",
        "PADDLE_NNODES": "2",
        "PADDLE_MASTER": f"{WORKER_0}:36543",
    }
    assert PADDLE.is_leader(job, Replica("Worker", 0))
    assert PADDLE.succeeded(job, {Replica("Worker", 0): Outcome.SUCCEEDED, Replica("Worker", 1): Outcome.SUCCEEDED})


def test_the_rendezvous_roles_named_port() -> None:
    ps = make_job(PADDLE, {"Master": 1, "Worker": 1}, name="j", ports={"Master": 1234, "Worker": 5678})
    assert env(ps, "Worker", 0)["PADDLE_MASTER"] == "j-master-0.j.default.svc:1234"
    collective = make_job(PADDLE, {"Worker": 2}, name="j", ports={"Worker": 37777})  # Kubeflow's simple-cpu.yaml
    assert env(collective, "Worker", 1)["PADDLE_MASTER"] == "j-worker-0.j.default.svc:37777"


def test_a_local_run_points_every_node_at_the_rendezvous_replicas_own_port() -> None:
    job = make_job(PADDLE, {"Master": 1, "Worker": 2})
    cluster = FakeCluster(job, style="ip")
    assert PADDLE.env(job, Replica("Master", 0), cluster)["POD_IP_DUMMY"] == "198.18.0.1"
    assert PADDLE.env(job, Replica("Worker", 1), cluster)["PADDLE_MASTER"] == "198.18.0.1:40101"


# -- rendering ----------------------------------------------------------------------------------------


def pods(job: MLJob, *extra: object) -> list[dict[str, Any]]:
    return [
        p
        for p in render(job, PADDLE, load_plugins(entry_points=False, extra=[mljob_paddle, *extra]))
        if p["kind"] == "Pod"
    ]


def wiring(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in pod["spec"]["containers"][0]["env"] if e["name"] in Paddle.reserved_env]


def leaders(job: MLJob) -> list[str]:
    return [p["metadata"]["name"] for p in pods(job) if p["metadata"]["labels"].get("mljob.io/leader") == "true"]


def test_master_0_leads_a_parameter_server_job() -> None:
    assert leaders(make_job(PADDLE, {"Master": 2, "Worker": 3}, name="j")) == ["j-master-0"]


def test_worker_0_leads_a_collective_job() -> None:
    assert leaders(make_job(PADDLE, {"Worker": 3}, name="j")) == ["j-worker-0"]


def test_pods_default_to_kubeflows_restart_policy_and_port() -> None:
    rendered = pods(make_job(PADDLE, {"Master": 1, "Worker": 1}))
    assert {p["spec"]["restartPolicy"] for p in rendered} == {"OnFailure"}
    assert rendered[0]["spec"]["containers"][0]["ports"] == [
        {"name": "master", "containerPort": 36543, "protocol": "TCP"}
    ]


def test_the_rendezvous_pod_names_its_own_ip_as_kubeflow_does() -> None:
    """Paddle's launcher hosts the rendezvous only where PADDLE_MASTER's host is its own IP address."""
    master, worker = pods(make_job(PADDLE, {"Master": 1, "Worker": 1}, name="ctr", namespace="ads"))
    assert wiring(master) == [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PADDLE_JOB_ID", "value": "ctr"},
        {"name": "PADDLE_NNODES", "value": "2"},
        {"name": "POD_IP_DUMMY", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        {"name": "PADDLE_MASTER", "value": "$(POD_IP_DUMMY):36543"},
        {"name": "PADDLE_SERVER_NUM", "value": "1"},
    ]
    assert wiring(worker) == [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PADDLE_JOB_ID", "value": "ctr"},
        {"name": "PADDLE_NNODES", "value": "2"},
        {"name": "PADDLE_MASTER", "value": f"{MASTER_0}:36543"},
        {"name": "PADDLE_TRAINER_NUM", "value": "1"},
    ]
    assert object_problems(master) == []


def test_the_downward_api_form_keeps_a_named_port_and_only_touches_the_rendezvous() -> None:
    job = make_job(PADDLE, {"Worker": 3}, name="ocr", ports={"Worker": 37777})
    rendered = pods(job)
    assert wiring(rendered[0])[-1] == {"name": "PADDLE_MASTER", "value": "$(POD_IP_DUMMY):37777"}
    plain = [p for p in render(job, PADDLE, plugins_for(PADDLE)) if p["kind"] == "Pod"]
    assert rendered[1:] == plain[1:]


def test_the_wiring_goes_to_the_paddle_container_of_several() -> None:
    job = make_job(PADDLE, {"Worker": 2}, name="j")
    doc = job.model_dump(by_alias=True, exclude_none=True)
    containers = doc["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "log-shipper", "image": "fluent/fluent-bit:3"})
    leader = pods(MLJob.model_validate(doc))[0]
    shipper, paddle = leader["spec"]["containers"]
    assert "env" not in shipper
    assert {"name": "PADDLE_MASTER", "value": "$(POD_IP_DUMMY):36543"} in paddle["env"]


def test_other_frameworks_jobs_are_left_alone() -> None:
    job = make_job(Coordinated(), {"Coordinator": 1, "Worker": 2, "Store": 1}, name="other")
    with_paddle = render(job, Coordinated(), plugins_for(Coordinated(), extra=[mljob_paddle]))
    assert with_paddle == render(job, Coordinated(), plugins_for(Coordinated()))


# -- the success rule ---------------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_with_a_master_every_master_decides() -> None:
    job = make_job(PADDLE, {"Master": 2, "Worker": 1})
    m0, m1, w0 = Replica("Master", 0), Replica("Master", 1), Replica("Worker", 0)
    assert PADDLE.succeeded(job, {m0: S, m1: S, w0: R}) is True
    assert PADDLE.succeeded(job, {m0: S, m1: S, w0: F}) is True
    assert PADDLE.succeeded(job, {m0: S, m1: R, w0: S}) is False


def test_without_a_master_every_worker_must_succeed() -> None:
    job = make_job(PADDLE, {"Worker": 2})
    assert PADDLE.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): R}) is False
    assert PADDLE.succeeded(job, {Replica("Worker", 0): S}) is False
    assert PADDLE.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): S}) is True


# -- validation through the core --------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [{"Worker": 0}, {"Master": 0, "Worker": 0}, {"Master": 0}])
def test_no_master_and_no_workers(roles: dict[str, int]) -> None:
    assert one_problem(make_job(PADDLE, roles)) == (
        "spec.replicaSpecs.Worker.replicas",
        "a Paddle job without a Master needs a Worker",
    )


def test_a_role_paddle_does_not_have() -> None:
    assert one_problem(make_job(PADDLE, {"Worker": 1, "PS": 1})) == (
        "spec.replicaSpecs.PS",
        "unknown role 'PS' for framework 'paddle' (roles: Master, Worker)",
    )


@pytest.mark.parametrize("var", sorted(Paddle.reserved_env))
def test_every_wired_variable_set_by_the_user_is_rejected(var: str) -> None:
    path, message = one_problem(make_job(PADDLE, {"Worker": 2}, env={"Worker": {var: "x"}}))
    assert path == "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"
    assert message == f"{var} is set by the paddle framework; remove it"


def test_kubeflows_elastic_policy_is_not_an_option() -> None:
    assert one_problem(make_job(PADDLE, {"Worker": 2}, options={"elasticPolicy": {"maxReplicas": 4}})) == (
        "spec.frameworkOptions.elasticPolicy",
        "unknown field",
    )


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("paddle"), Paddle)
    assert plugins.source("paddle").distribution == "mljob-paddle"
    assert plugins.broadcast_hooks()["paddle"] == ["mljob_mutate_pod"]


# -- for real: paddle's launcher on 127.0.0.1, one node per replica ------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import os
    import paddle
    import paddle.distributed as dist
    dist.init_parallel_env()
    token = paddle.to_tensor([dist.get_rank() + 1.0])
    dist.all_reduce(token)
    print("JOINED", os.environ["PADDLE_JOB_ID"], dist.get_rank(), dist.get_world_size(), int(token.item()), flush=True)
    """
)
JOINED = re.compile(r"^JOINED (\S+) (\d+) (\d+) (\d+)$", re.MULTILINE)


@pytest.mark.frameworks
@pytest.mark.slow
def test_paddles_launcher_forms_a_collective_with_the_wiring(tmp_path: Path) -> None:
    """Each node runs ``python -m paddle.distributed.launch`` with only the wiring (and PATH) set."""
    job = make_job(PADDLE, {"Worker": 3}, name="paddle-join")
    cluster = loopback_cluster(job)
    script = tmp_path / "join.py"
    script.write_text(SCRIPT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(tmp_path / str(replica)), str(script)],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "OMP_NUM_THREADS": "1",
                **PADDLE.env(job, replica, cluster),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for replica in replicas_of(job)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [(out + err)[-2000:] for out, err in results]
    joined = sorted(JOINED.findall(out)[-1] for out, _ in results)  # the launcher prints its trainer's output
    assert joined == [("paddle-join", str(rank), "3", "6") for rank in range(3)]
