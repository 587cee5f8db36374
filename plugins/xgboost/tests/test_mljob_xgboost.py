"""The XGBoost plugin: the contract, the variables pinned to exact values, rendering, validation,
success, then XGBoost's tracker and collective joined for real from the wiring."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import mljob_xgboost
import pytest
from mljob_xgboost import XGBoost

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, loopback_cluster, make_job
from mljob.plugins import load_plugins

XGB = XGBoost()


class TestXGBoostContract(FrameworkContract):
    framework = XGB

    def sample_job(self) -> MLJob:
        return make_job(XGB, {"Master": 1, "Worker": 2}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [
            self.sample_job(),
            make_job(XGB, {"Worker": 3}, name="workers-only"),
            make_job(XGB, {"Master": 1}, name="master-only"),
            make_job(XGB, {"Master": 1, "Worker": 0}, name="no-workers"),
        ]


def env(job: MLJob, role: str, index: int) -> Mapping[str, str]:
    return XGB.env(job, Replica(role, index), ServiceCluster.of(job, XGB))


def problems(job: MLJob) -> list[tuple[str, str]]:
    plugins = load_plugins(entry_points=False, extra=[mljob_xgboost])
    return [(p.path, p.message) for p in check_job(job, plugins).problems]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables ----------------------------------------------------------------------------------

MASTER_AND_WORKERS = make_job(XGB, {"Master": 1, "Worker": 2}, name="gbm", namespace="tabular")
WORKER_HOSTS = "gbm-worker-0.gbm.tabular.svc,gbm-worker-1.gbm.tabular.svc"


def test_the_master_is_rank_0_and_runs_the_tracker_in_kubeflows_order() -> None:
    assert list(env(MASTER_AND_WORKERS, "Master", 0).items()) == [
        ("MASTER_PORT", "9999"),
        ("MASTER_ADDR", "gbm-master-0.gbm.tabular.svc"),
        ("WORLD_SIZE", "3"),
        ("RANK", "0"),
        ("PYTHONUNBUFFERED", "1"),
        ("WORKER_PORT", "9999"),
        ("WORKER_ADDRS", WORKER_HOSTS),
        ("DMLC_TRACKER_URI", "gbm-master-0.gbm.tabular.svc"),
        ("DMLC_TRACKER_PORT", "9999"),
        ("DMLC_TASK_ID", "0"),
        ("DMLC_NUM_WORKER", "3"),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_worker_i_is_rank_i_plus_1(index: int) -> None:
    assert env(MASTER_AND_WORKERS, "Worker", index) == {
        "MASTER_PORT": "9999",
        "MASTER_ADDR": "gbm-master-0.gbm.tabular.svc",
        "WORLD_SIZE": "3",
        "RANK": str(index + 1),
        "PYTHONUNBUFFERED": "1",
        "WORKER_PORT": "9999",
        "WORKER_ADDRS": WORKER_HOSTS,
        "DMLC_TRACKER_URI": "gbm-master-0.gbm.tabular.svc",
        "DMLC_TRACKER_PORT": "9999",
        "DMLC_TASK_ID": str(index + 1),
        "DMLC_NUM_WORKER": "3",
    }


def test_without_a_master_worker_0_runs_the_tracker_and_worker_i_is_rank_i() -> None:
    job = make_job(XGB, {"Worker": 3}, name="gbm", namespace="tabular", ports={"Worker": 29500})
    hosts = ",".join(f"gbm-worker-{i}.gbm.tabular.svc" for i in range(3))
    for index in range(3):
        assert env(job, "Worker", index) == {
            "MASTER_PORT": "29500",
            "MASTER_ADDR": "gbm-worker-0.gbm.tabular.svc",
            "WORLD_SIZE": "3",
            "RANK": str(index),
            "PYTHONUNBUFFERED": "1",
            "WORKER_PORT": "29500",
            "WORKER_ADDRS": hosts,
            "DMLC_TRACKER_URI": "gbm-worker-0.gbm.tabular.svc",
            "DMLC_TRACKER_PORT": "29500",
            "DMLC_TASK_ID": str(index),
            "DMLC_NUM_WORKER": "3",
        }


@pytest.mark.parametrize("roles", [{"Master": 1}, {"Master": 1, "Worker": 0}, {"Worker": 1}])
def test_a_job_of_one_replica_gets_no_worker_list(roles: dict[str, int]) -> None:
    job = make_job(XGB, roles, name="solo")
    role = next(r for r, n in roles.items() if n)
    wired = env(job, role, 0)
    assert (wired["WORLD_SIZE"], wired["RANK"], wired["DMLC_NUM_WORKER"]) == ("1", "0", "1")
    assert "WORKER_PORT" not in wired
    assert "WORKER_ADDRS" not in wired


def test_the_masters_and_the_workers_named_ports() -> None:
    job = make_job(XGB, {"Master": 1, "Worker": 1}, name="j", ports={"Master": 1234, "Worker": 5678})
    wired = env(job, "Worker", 0)
    assert (wired["MASTER_PORT"], wired["DMLC_TRACKER_PORT"], wired["WORKER_PORT"]) == ("1234", "1234", "5678")


def test_a_local_run_points_every_rank_at_the_masters_own_port() -> None:
    job = make_job(XGB, {"Master": 1, "Worker": 2})
    wired = XGB.env(job, Replica("Worker", 1), FakeCluster(job, style="ip"))
    assert (wired["MASTER_ADDR"], wired["MASTER_PORT"]) == ("198.18.0.1", "40101")
    assert (wired["WORKER_ADDRS"], wired["WORKER_PORT"]) == ("198.18.0.2,198.18.0.3", "40108")


# -- rendering ----------------------------------------------------------------------------------------


def leaders(job: MLJob) -> list[str]:
    return [
        pod["metadata"]["name"]
        for pod in render(job, XGB)
        if pod["kind"] == "Pod" and pod["metadata"]["labels"].get("mljob.io/leader") == "true"
    ]


def test_the_master_leads() -> None:
    assert leaders(make_job(XGB, {"Master": 1, "Worker": 3}, name="j")) == ["j-master-0"]


def test_worker_0_leads_without_a_master() -> None:
    assert leaders(make_job(XGB, {"Worker": 3}, name="j")) == ["j-worker-0"]


def test_pods_default_to_kubeflows_restart_policy_never_and_port_name() -> None:
    pods = [p for p in render(make_job(XGB, {"Master": 1, "Worker": 1}), XGB) if p["kind"] == "Pod"]
    assert {p["spec"]["restartPolicy"] for p in pods} == {"Never"}
    assert pods[0]["spec"]["containers"][0]["ports"] == [
        {"name": "xgboostjob-port", "containerPort": 9999, "protocol": "TCP"}
    ]


# -- the success rule ---------------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_the_master_decides() -> None:
    job = make_job(XGB, {"Master": 1, "Worker": 2})
    assert XGB.succeeded(job, {Replica("Master", 0): S, Replica("Worker", 0): R, Replica("Worker", 1): F}) is True
    assert XGB.succeeded(job, {Replica("Master", 0): F, Replica("Worker", 0): S, Replica("Worker", 1): S}) is False


def test_without_a_master_every_worker_must_succeed() -> None:
    job = make_job(XGB, {"Worker": 2})
    assert XGB.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): R}) is False
    assert XGB.succeeded(job, {Replica("Worker", 0): S}) is False
    assert XGB.succeeded(job, {Replica("Worker", 0): S, Replica("Worker", 1): S}) is True


# -- validation through the core --------------------------------------------------------------------------


def test_two_masters() -> None:
    assert one_problem(make_job(XGB, {"Master": 2, "Worker": 1})) == (
        "spec.replicaSpecs.Master.replicas",
        "xgboost allows at most 1 Master, got 2",
    )


def test_a_master_with_no_replica() -> None:
    assert one_problem(make_job(XGB, {"Master": 0, "Worker": 2})) == (
        "spec.replicaSpecs.Master.replicas",
        "a Master has exactly 1 replica, got 0; leave Master out to let worker 0 run the tracker",
    )


def test_no_master_and_no_workers() -> None:
    assert one_problem(make_job(XGB, {"Worker": 0})) == (
        "spec.replicaSpecs.Worker.replicas",
        "an XGBoost job without a Master needs a Worker",
    )


def test_a_role_xgboost_does_not_have() -> None:
    assert one_problem(make_job(XGB, {"Master": 1, "PS": 1})) == (
        "spec.replicaSpecs.PS",
        "unknown role 'PS' for framework 'xgboost' (roles: Master, Worker)",
    )


@pytest.mark.parametrize("var", sorted(XGBoost.reserved_env))
def test_every_wired_variable_set_by_the_user_is_rejected(var: str) -> None:
    path, message = one_problem(make_job(XGB, {"Master": 1, "Worker": 1}, env={"Master": {var: "x"}}))
    assert path == "spec.replicaSpecs.Master.template.spec.containers[0].env[0].name"
    assert message == f"{var} is set by the xgboost framework; remove it"


def test_xgboost_takes_no_options() -> None:
    assert one_problem(make_job(XGB, {"Worker": 2}, options={"numWorkersPerNode": 2})) == (
        "spec.frameworkOptions.numWorkersPerNode",
        "unknown field",
    )


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("xgboost"), XGBoost)
    assert plugins.source("xgboost").distribution == "mljob-xgboost"


# -- for real: XGBoost's tracker and collective on 127.0.0.1, one port per replica ----------------------------

# Kubeflow Trainer v2's names here; examples/xgboost-distributed reads the v1 names (MASTER_ADDR, RANK, ...).
SCRIPT = textwrap.dedent(
    """
    import os, warnings
    import numpy as np
    from xgboost import collective
    from xgboost.tracker import RabitTracker

    warnings.simplefilter("ignore")  # "retrying connection" while rank 0 starts its tracker
    uri, port = os.environ["DMLC_TRACKER_URI"], int(os.environ["DMLC_TRACKER_PORT"])
    task, workers = os.environ["DMLC_TASK_ID"], int(os.environ["DMLC_NUM_WORKER"])
    tracker = None
    if task == "0":
        tracker = RabitTracker(n_workers=workers, host_ip=uri, port=port, sortby="task", timeout=120)
        tracker.start()
    args = {"dmlc_tracker_uri": uri, "dmlc_tracker_port": port, "dmlc_task_id": task, "dmlc_retry": 30}
    with collective.CommunicatorContext(**args):
        total = collective.allreduce(np.array([collective.get_rank() + 1.0]), collective.Op.SUM)[0]
        print(os.environ["RANK"], collective.get_rank(), collective.get_world_size(), int(total), flush=True)
    if tracker is not None:
        tracker.wait_for(timeout=60)
    """
)


@pytest.mark.frameworks
@pytest.mark.parametrize("roles", [{"Master": 1, "Worker": 2}, {"Worker": 3}])
def test_the_xgboost_collective_forms_with_the_wiring(roles: dict[str, int], tmp_path: Path) -> None:
    job = make_job(XGB, roles)
    cluster = loopback_cluster(job)
    script = tmp_path / "join.py"
    script.write_text(SCRIPT)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **XGB.env(job, replica, cluster)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for replica in replicas_of(job)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    lines = [out.strip().splitlines()[-1] for out, _ in results]
    assert sorted(lines) == ["0 0 3 6", "1 1 3 6", "2 2 3 6"]  # RANK is the collective's rank
