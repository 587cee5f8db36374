"""The MXNet plugin: the contract, then DMLC_* and MX_CONFIG pinned to exact values for representative jobs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mljob_mxnet
import pytest
from mljob_mxnet import MXNet

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, loopback_cluster, make_job
from mljob.plugins import load_plugins

MX = MXNet()


class TestMXNetContract(FrameworkContract):
    framework = MX

    def sample_job(self) -> MLJob:
        return make_job(MX, {"Scheduler": 1, "Server": 2, "Worker": 2}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [self.sample_job(), make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 1}, name="smallest")]


def env(job: MLJob, role: str, index: int) -> Mapping[str, str]:
    return MX.env(job, Replica(role, index), ServiceCluster.of(job, MX))


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_mxnet])).problems]


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


# -- the variables ----------------------------------------------------------------------------------

JOB = make_job(
    MX,
    {"Scheduler": 1, "Server": 2, "Worker": 2},
    name="resnet",
    namespace="vision",
    ports={"Scheduler": 9000},
    annotations={"Worker": {"tuner-server-key": "rpc-key"}},
)
CLUSTER = {
    "scheduler": [{"url": "resnet-scheduler-0.resnet.vision.svc", "port": 9000}],
    "server": [
        {"url": "resnet-server-0.resnet.vision.svc", "port": 9091},
        {"url": "resnet-server-1.resnet.vision.svc", "port": 9091},
    ],
    "worker": [
        {"url": "resnet-worker-0.resnet.vision.svc", "port": 9091},
        {"url": "resnet-worker-1.resnet.vision.svc", "port": 9091},
    ],
}
LABELS = {"scheduler": "", "server": "", "worker": "rpc-key"}


def mx_config(role: str, index: int) -> dict[str, Any]:
    return {"cluster": CLUSTER, "labels": LABELS, "task": {"type": role, "index": index}}


def test_mx_config_text_is_kubeflows_compact_json_in_go_field_order() -> None:
    assert env(JOB, "Server", 1)["MX_CONFIG"] == (
        '{"cluster":{"scheduler":[{"url":"resnet-scheduler-0.resnet.vision.svc","port":9000}],'
        '"server":[{"url":"resnet-server-0.resnet.vision.svc","port":9091},'
        '{"url":"resnet-server-1.resnet.vision.svc","port":9091}],'
        '"worker":[{"url":"resnet-worker-0.resnet.vision.svc","port":9091},'
        '{"url":"resnet-worker-1.resnet.vision.svc","port":9091}]},'
        '"labels":{"scheduler":"","server":"","worker":"rpc-key"},'
        '"task":{"type":"server","index":1}}'
    )


def common(role: str) -> dict[str, str]:
    return {
        "DMLC_PS_ROOT_PORT": "9000",
        "DMLC_PS_ROOT_URI": "resnet-scheduler-0.resnet.vision.svc",
        "DMLC_NUM_SERVER": "2",
        "DMLC_NUM_WORKER": "2",
        "DMLC_ROLE": role,
        "DMLC_USE_KUBERNETES": "1",
    }


def parsed(wired: Mapping[str, str]) -> dict[str, Any]:
    result = dict(wired)
    result["MX_CONFIG"] = json.loads(result["MX_CONFIG"])
    return result


def test_the_scheduler() -> None:
    assert list(env(JOB, "Scheduler", 0)) == [
        "MX_CONFIG",
        "DMLC_PS_ROOT_PORT",
        "DMLC_PS_ROOT_URI",
        "DMLC_NUM_SERVER",
        "DMLC_NUM_WORKER",
        "DMLC_ROLE",
        "DMLC_USE_KUBERNETES",
    ]
    assert parsed(env(JOB, "Scheduler", 0)) == {"MX_CONFIG": mx_config("scheduler", 0), **common("scheduler")}


@pytest.mark.parametrize("index", [0, 1])
def test_a_server(index: int) -> None:
    assert parsed(env(JOB, "Server", index)) == {"MX_CONFIG": mx_config("server", index), **common("server")}


@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_also_gets_its_worker_id(index: int) -> None:
    assert parsed(env(JOB, "Worker", index)) == {
        "MX_CONFIG": mx_config("worker", index),
        **common("worker"),
        "DMLC_WORKER_ID": str(index),
    }


@pytest.mark.parametrize(("servers", "workers"), [(1, 1), (3, 4)])
def test_counts(servers: int, workers: int) -> None:
    job = make_job(MX, {"Scheduler": 1, "Server": servers, "Worker": workers})
    for replica in replicas_of(job):
        wired = env(job, replica.role, replica.index)
        assert (wired["DMLC_NUM_SERVER"], wired["DMLC_NUM_WORKER"]) == (str(servers), str(workers))
        assert [len(v) for v in json.loads(wired["MX_CONFIG"])["cluster"].values()] == [1, servers, workers]


def test_local_addresses_pin_each_nodes_own_host_and_port() -> None:
    """ps-lite binds DMLC_NODE_HOST:PORT; unset, it would pick an interface and a random port."""
    job = make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 2}, name="j")
    cluster = FakeCluster(job, style="ip")
    wired = {str(r): MX.env(job, r, cluster) for r in replicas_of(job)}
    assert {name: (w.get("DMLC_NODE_HOST"), w.get("PORT")) for name, w in wired.items()} == {
        "scheduler-0": (None, None),
        "server-0": ("198.18.0.2", "40108"),
        "worker-0": ("198.18.0.3", "40115"),
        "worker-1": ("198.18.0.4", "40122"),
    }
    assert {(w["DMLC_PS_ROOT_URI"], w["DMLC_PS_ROOT_PORT"]) for w in wired.values()} == {("198.18.0.1", "40101")}
    assert json.loads(wired["worker-1"]["MX_CONFIG"])["cluster"]["worker"] == [
        {"url": "198.18.0.3", "port": 40115},
        {"url": "198.18.0.4", "port": 40122},
    ]


def test_the_cluster_is_built_once_per_render_not_once_per_replica() -> None:
    job = make_job(MX, {"Scheduler": 1, "Server": 10, "Worker": 500})
    cluster = FakeCluster(job)
    for replica in replicas_of(job):
        MX.env(job, replica, cluster)
    # the cluster is read once (511); each replica asks for the scheduler (511) and its own address (510)
    assert len(cluster.asked) == 511 + 511 + 510


# -- rendering ----------------------------------------------------------------------------------------


def test_the_scheduler_leads_and_pods_default_to_never_restart() -> None:
    pods = [
        p for p in render(make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 2}, name="j"), MX) if p["kind"] == "Pod"
    ]
    assert [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("mljob.io/leader")] == ["j-scheduler-0"]
    assert {p["spec"]["restartPolicy"] for p in pods} == {"Never"}
    assert pods[0]["spec"]["containers"][0]["ports"] == [
        {"name": "mxjob-port", "containerPort": 9091, "protocol": "TCP"}
    ]


# -- the success rule ---------------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def test_every_worker_must_succeed_and_the_others_may_still_run() -> None:
    job = make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 2})
    base = {Replica("Scheduler", 0): R, Replica("Server", 0): R}
    assert MX.succeeded(job, {**base, Replica("Worker", 0): S, Replica("Worker", 1): S}) is True
    assert MX.succeeded(job, {**base, Replica("Worker", 0): S, Replica("Worker", 1): R}) is False
    assert MX.succeeded(job, {**base, Replica("Worker", 0): S, Replica("Worker", 1): F}) is False


# -- validation through the core --------------------------------------------------------------------------


def test_no_scheduler() -> None:
    path, message = one_problem(make_job(MX, {"Server": 1, "Worker": 1}))
    assert path == "spec.replicaSpecs"
    assert "Scheduler" in message
    assert "at least 1" in message


def test_two_schedulers() -> None:
    path, message = one_problem(make_job(MX, {"Scheduler": 2, "Server": 1, "Worker": 1}))
    assert path == "spec.replicaSpecs.Scheduler.replicas"
    assert "at most 1 Scheduler" in message
    assert "2" in message


def test_no_server() -> None:
    path, message = one_problem(make_job(MX, {"Scheduler": 1, "Worker": 1}))
    assert path == "spec.replicaSpecs"
    assert "Server" in message
    assert "at least 1" in message


def test_zero_servers() -> None:
    path, message = one_problem(make_job(MX, {"Scheduler": 1, "Server": 0, "Worker": 1}))
    assert path == "spec.replicaSpecs.Server.replicas"
    assert "at least 1 Server" in message
    assert "0" in message


def test_no_worker() -> None:
    path, message = one_problem(make_job(MX, {"Scheduler": 1, "Server": 1}))
    assert path == "spec.replicaSpecs"
    assert "Worker" in message
    assert "at least 1" in message


@pytest.mark.parametrize("var", ["DMLC_ROLE", "MX_CONFIG", "PORT", "DMLC_NODE_HOST"])
def test_a_wired_variable_set_by_the_user(var: str) -> None:
    job = make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 1}, env={"Server": {var: "x"}})
    path, message = one_problem(job)
    assert path == "spec.replicaSpecs.Server.template.spec.containers[0].env[0].name"
    assert var in message
    assert "mxnet" in message


def test_no_options() -> None:
    path, message = one_problem(make_job(MX, {"Scheduler": 1, "Server": 1, "Worker": 1}, options={"jobMode": "MXTune"}))
    assert path == "spec.frameworkOptions.jobMode"
    assert "unknown field" in message


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("mxnet"), MXNet)
    assert plugins.source("mxnet").distribution == "mljob-mxnet"


# -- for real: ps-lite on 127.0.0.1, one port per replica -------------------------------------------------

WORKER = textwrap.dedent(
    """
    import mxnet as mx
    kv = mx.kv.create("dist_sync")
    kv.init(3, mx.nd.zeros((2,)))
    kv.push(3, mx.nd.ones((2,)) * (kv.rank + 1))
    out = mx.nd.zeros((2,))
    kv.pull(3, out=out)
    print(kv.num_workers, int(out.asnumpy()[0]))
    """
)


def mxnet_python() -> str:
    """This interpreter if it has MXNet, else the repository's .venv-mxnet (MXNet needs numpy<1.24).

    Tests marked ``frameworks`` need the frameworks (``make setup-mxnet``); deselect them with
    ``-m "not frameworks"`` rather than letting a missing install pass as a skip.
    """
    if importlib.util.find_spec("mxnet") is not None:
        return sys.executable
    candidate = Path(__file__).resolve().parents[3] / ".venv-mxnet" / "bin" / "python"
    assert candidate.exists(), "MXNet is neither here nor in .venv-mxnet: run `make setup-mxnet`"
    return str(candidate)


@pytest.mark.frameworks
def test_ps_lite_connects_with_the_wiring(tmp_path: Path) -> None:
    python = mxnet_python()
    job = make_job(MX, {"Scheduler": 1, "Server": 2, "Worker": 2})
    cluster = loopback_cluster(job)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = {}
    for replica in replicas_of(job):
        # importing mxnet as a scheduler or server runs that node until the workers finish
        command = [python, str(script)] if replica.role == "Worker" else [python, "-c", "import mxnet"]
        wired = MX.env(job, replica, cluster)
        procs[replica] = subprocess.Popen(
            command, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **wired}, stdout=subprocess.PIPE, text=True
        )
    outputs = {str(r): p.communicate(timeout=120)[0].strip() for r, p in procs.items()}
    assert {str(r): p.returncode for r, p in procs.items()} == dict.fromkeys(outputs, 0)
    assert outputs["worker-0"] == outputs["worker-1"] == "2 3"
