"""The TensorFlow plugin: the contract, then TF_CONFIG pinned to exact values for representative jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mljob_tensorflow
import pytest
from mljob_tensorflow import TensorFlow

from mljob import MLJob, Outcome, Replica
from mljob.core.render import ServiceCluster, render
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, loopback_cluster, make_job
from mljob.plugins import load_plugins

TF = TensorFlow()


class TestTensorFlowContract(FrameworkContract):
    framework = TF

    def sample_job(self) -> MLJob:
        return make_job(TF, {"Chief": 1, "Worker": 2, "PS": 2, "Evaluator": 1}, name="contract-job")

    def sample_jobs(self) -> Sequence[MLJob]:
        return [
            self.sample_job(),
            make_job(TF, {"Worker": 3}, name="workers-only", options={"successPolicy": "AllWorkers"}),
            make_job(TF, {"Master": 1, "Worker": 1, "PS": 1}, name="legacy-master"),
        ]

    def invalid_jobs(self) -> Sequence[MLJob]:
        return [
            make_job(TF, {"Chief": 1, "Master": 1, "Worker": 1}, name="two-chiefs"),
            make_job(TF, {"PS": 2, "Evaluator": 1}, name="nobody-to-succeed"),
        ]


def tf_config(job: MLJob, role: str, index: int) -> dict[str, Any]:
    env = TF.env(job, Replica(role, index), ServiceCluster.of(job, TF))
    assert list(env) == ["TF_CONFIG"]
    parsed: dict[str, Any] = json.loads(env["TF_CONFIG"])
    return parsed


def problems(job: MLJob) -> list[tuple[str, str]]:
    return [
        (p.path, p.message) for p in check_job(job, load_plugins(entry_points=False, extra=[mljob_tensorflow])).problems
    ]


# -- TF_CONFIG --------------------------------------------------------------------------------

ALL_ROLES = make_job(
    TF, {"Chief": 1, "Worker": 2, "PS": 2, "Evaluator": 1}, name="mnist", namespace="ml-team", ports={"PS": 3333}
)
TRAINING_CLUSTER = {
    "chief": ["mnist-chief-0.mnist.ml-team.svc:2222"],
    "ps": ["mnist-ps-0.mnist.ml-team.svc:3333", "mnist-ps-1.mnist.ml-team.svc:3333"],
    "worker": ["mnist-worker-0.mnist.ml-team.svc:2222", "mnist-worker-1.mnist.ml-team.svc:2222"],
}


def test_tf_config_text_is_kubeflows_compact_json_in_go_field_order() -> None:
    env = TF.env(ALL_ROLES, Replica("Worker", 1), ServiceCluster.of(ALL_ROLES, TF))
    assert env == {
        "TF_CONFIG": '{"cluster":{"chief":["mnist-chief-0.mnist.ml-team.svc:2222"],'
        '"ps":["mnist-ps-0.mnist.ml-team.svc:3333","mnist-ps-1.mnist.ml-team.svc:3333"],'
        '"worker":["mnist-worker-0.mnist.ml-team.svc:2222","mnist-worker-1.mnist.ml-team.svc:2222"]},'
        '"task":{"type":"worker","index":1},"environment":"cloud"}'
    }


@pytest.mark.parametrize(
    ("role", "index", "task_type"),
    [("Chief", 0, "chief"), ("Worker", 0, "worker"), ("Worker", 1, "worker"), ("PS", 0, "ps"), ("PS", 1, "ps")],
)
def test_training_replicas_see_the_training_cluster(role: str, index: int, task_type: str) -> None:
    assert tf_config(ALL_ROLES, role, index) == {
        "cluster": TRAINING_CLUSTER,
        "task": {"type": task_type, "index": index},
        "environment": "cloud",
    }


def test_the_evaluator_also_sees_itself_as_kubeflow_writes_it() -> None:
    assert tf_config(ALL_ROLES, "Evaluator", 0) == {
        "cluster": {**TRAINING_CLUSTER, "evaluator": ["mnist-evaluator-0.mnist.ml-team.svc:2222"]},
        "task": {"type": "evaluator", "index": 0},
        "environment": "cloud",
    }
    text = TF.env(ALL_ROLES, Replica("Evaluator", 0), ServiceCluster.of(ALL_ROLES, TF))["TF_CONFIG"]
    assert list(json.loads(text)["cluster"]) == ["chief", "evaluator", "ps", "worker"]


def test_legacy_master_is_listed_as_master() -> None:
    job = make_job(TF, {"Master": 1, "Worker": 1}, name="old", namespace="default")
    assert tf_config(job, "Master", 0) == {
        "cluster": {"master": ["old-master-0.old.default.svc:2222"], "worker": ["old-worker-0.old.default.svc:2222"]},
        "task": {"type": "master", "index": 0},
        "environment": "cloud",
    }


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_workers_only(workers: int) -> None:
    job = make_job(TF, {"Worker": workers}, name="w", namespace="research")
    expected = [f"w-worker-{i}.w.research.svc:2222" for i in range(workers)]
    for i in range(workers):
        assert tf_config(job, "Worker", i) == {
            "cluster": {"worker": expected},
            "task": {"type": "worker", "index": i},
            "environment": "cloud",
        }


def test_a_role_with_no_replicas_is_an_empty_list() -> None:
    job = make_job(TF, {"Chief": 1, "Worker": 1, "PS": 0}, name="j")
    assert tf_config(job, "Chief", 0)["cluster"] == {
        "chief": ["j-chief-0.j.default.svc:2222"],
        "ps": [],
        "worker": ["j-worker-0.j.default.svc:2222"],
    }


def test_a_single_replica_gets_no_tf_config() -> None:
    job = make_job(TF, {"Worker": 1})
    assert TF.env(job, Replica("Worker", 0), ServiceCluster.of(job, TF)) == {}


def test_local_addresses_with_a_port_per_replica() -> None:
    job = make_job(TF, {"Worker": 2, "PS": 1}, name="j")
    cluster = FakeCluster(job, style="ip")
    assert json.loads(TF.env(job, Replica("PS", 0), cluster)["TF_CONFIG"])["cluster"] == {
        "ps": ["198.18.0.3:40115"],
        "worker": ["198.18.0.1:40101", "198.18.0.2:40108"],
    }


def test_the_cluster_is_built_once_per_render_not_once_per_replica() -> None:
    job = make_job(TF, {"Worker": 2000, "PS": 4})
    cluster = FakeCluster(job)
    for replica in replicas_of(job):
        TF.env(job, replica, cluster)
    assert len(cluster.asked) == 2004


def test_a_different_cluster_object_is_asked_again() -> None:
    job = make_job(TF, {"Worker": 2})
    TF.env(job, Replica("Worker", 0), FakeCluster(job))
    other = FakeCluster(job, style="ip")
    assert "198.18.0.1:40101" in TF.env(job, Replica("Worker", 1), other)["TF_CONFIG"]


# -- rendering: leader label and restart policy -----------------------------------------------


def leaders(job: MLJob) -> list[str]:
    return [
        pod["metadata"]["name"]
        for pod in render(job, TF)
        if pod["kind"] == "Pod" and pod["metadata"]["labels"].get("mljob.io/leader") == "true"
    ]


def test_the_chief_leads() -> None:
    assert leaders(make_job(TF, {"Chief": 1, "Worker": 2}, name="j")) == ["j-chief-0"]
    assert leaders(make_job(TF, {"Master": 1, "Worker": 2}, name="j")) == ["j-master-0"]


def test_worker_0_leads_without_a_chief() -> None:
    assert leaders(make_job(TF, {"Worker": 3, "PS": 1}, name="j")) == ["j-worker-0"]


def test_pods_default_to_kubeflows_restart_policy_never() -> None:
    pods = [p for p in render(make_job(TF, {"Worker": 2}), TF) if p["kind"] == "Pod"]
    assert {p["spec"]["restartPolicy"] for p in pods} == {"Never"}


def test_the_tfjob_port_name_is_used_for_the_default_port() -> None:
    pod = render(make_job(TF, {"Worker": 2}), TF)[0]
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}]


# -- the success rule ---------------------------------------------------------------------------

S, R, F = Outcome.SUCCEEDED, Outcome.RUNNING, Outcome.FAILED


def outcomes(**by_replica: Outcome) -> dict[Replica, Outcome]:
    result = {}
    for key, outcome in by_replica.items():
        role, index = key.rsplit("_", 1)
        result[Replica(role, int(index))] = outcome
    return result


def test_the_chief_decides() -> None:
    job = make_job(TF, {"Chief": 1, "Worker": 2, "PS": 1, "Evaluator": 1})
    assert TF.succeeded(job, outcomes(Chief_0=S, Worker_0=R, Worker_1=F, PS_0=R, Evaluator_0=R)) is True
    assert TF.succeeded(job, outcomes(Chief_0=R, Worker_0=S, Worker_1=S, PS_0=R, Evaluator_0=S)) is False


def test_the_legacy_master_decides() -> None:
    job = make_job(TF, {"Master": 1, "Worker": 1})
    assert TF.succeeded(job, outcomes(Master_0=S, Worker_0=R)) is True


def test_without_a_chief_worker_0_decides() -> None:
    job = make_job(TF, {"Worker": 3, "PS": 1})
    assert TF.succeeded(job, outcomes(Worker_0=S, Worker_1=R, Worker_2=R, PS_0=R)) is True
    assert TF.succeeded(job, outcomes(Worker_0=R, Worker_1=S, Worker_2=S, PS_0=R)) is False


def test_all_workers_policy_waits_for_every_worker() -> None:
    job = make_job(TF, {"Worker": 3, "PS": 1}, options={"successPolicy": "AllWorkers"})
    assert TF.succeeded(job, outcomes(Worker_0=S, Worker_1=S, Worker_2=R, PS_0=R)) is False
    assert TF.succeeded(job, outcomes(Worker_0=S, Worker_1=S, Worker_2=S, PS_0=R)) is True


def test_a_chief_with_zero_replicas_leaves_the_decision_to_worker_0() -> None:
    job = make_job(TF, {"Chief": 0, "Worker": 2})
    assert TF.succeeded(job, outcomes(Worker_0=S, Worker_1=R)) is True
    assert TF.is_leader(job, Replica("Worker", 0)) is True


# -- validation through the core ------------------------------------------------------------------
# The plugin's own messages are pinned exactly; those the core words (role bounds, reserved
# variables, options) are pinned by path and by the facts the message must carry.


def one_problem(job: MLJob) -> tuple[str, str]:
    found = problems(job)
    assert len(found) == 1, found
    return found[0]


def test_two_chiefs() -> None:
    path, message = one_problem(make_job(TF, {"Chief": 2, "Worker": 1}))
    assert path == "spec.replicaSpecs.Chief.replicas"
    assert "at most 1 Chief" in message
    assert "2" in message


def test_two_masters() -> None:
    path, message = one_problem(make_job(TF, {"Master": 2}))
    assert path == "spec.replicaSpecs.Master.replicas"
    assert "at most 1 Master" in message
    assert "2" in message


def test_chief_and_master_together() -> None:
    assert one_problem(make_job(TF, {"Chief": 1, "Master": 1, "Worker": 1})) == (
        "spec.replicaSpecs",
        "Chief and Master are the same role (Master is its legacy name); keep one",
    )


def test_nothing_to_decide_success() -> None:
    assert one_problem(make_job(TF, {"PS": 2, "Evaluator": 1})) == (
        "spec.replicaSpecs",
        "a TensorFlow job needs a Chief or at least one Worker: the job succeeds when they do",
    )


def test_tf_config_set_by_the_user() -> None:
    path, message = one_problem(make_job(TF, {"Worker": 2}, env={"Worker": {"TF_CONFIG": "{}"}}))
    assert path == "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"
    assert "TF_CONFIG" in message
    assert "tensorflow" in message


def test_a_lower_case_role_is_unknown() -> None:
    path, message = one_problem(make_job(TF, {"worker": 2}))
    assert path == "spec.replicaSpecs.worker"
    assert "'worker'" in message
    assert "'Worker'" in message


def test_success_policy_values() -> None:
    assert problems(make_job(TF, {"Worker": 2}, options={"successPolicy": "AllWorkers"})) == []
    assert problems(make_job(TF, {"Worker": 2}, options={"successPolicy": ""})) == []
    path, message = one_problem(make_job(TF, {"Worker": 2}, options={"successPolicy": "all"}))
    assert path == "spec.frameworkOptions.successPolicy"
    assert "'AllWorkers'" in message
    assert "'all'" in message


def test_unsupported_kubeflow_options_are_unknown() -> None:
    path, message = one_problem(make_job(TF, {"Worker": 2}, options={"enableDynamicWorker": True}))
    assert path == "spec.frameworkOptions.enableDynamicWorker"
    assert "unknown field" in message


def test_the_entry_point_finds_the_plugin() -> None:
    plugins = load_plugins()
    assert isinstance(plugins.framework("tensorflow"), TensorFlow)
    assert plugins.source("tensorflow").distribution == "mljob-tensorflow"
    assert plugins.framework("tensorflow").version == plugins.source("tensorflow").version  # type: ignore[union-attr]


# -- for real: MultiWorkerMirroredStrategy on 127.0.0.1, one port per replica ---------------------------

SCRIPT = textwrap.dedent(
    """
    import json, os
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    @tf.function
    def step():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0)
    total = strategy.experimental_local_results(strategy.run(step))[0]
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    print(task["type"], task["index"], strategy.num_replicas_in_sync, int(total.numpy()))
    """
)


@pytest.mark.frameworks
@pytest.mark.slow
def test_multi_worker_mirrored_strategy_connects_with_the_wiring(tmp_path: Path) -> None:
    job = make_job(TF, {"Chief": 1, "Worker": 2})
    cluster = loopback_cluster(job)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    procs = {
        str(replica): subprocess.Popen(
            [sys.executable, str(script)],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **TF.env(job, replica, cluster),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for replica in replicas_of(job)
    }
    outputs = {name: proc.communicate(timeout=300)[0].strip() for name, proc in procs.items()}
    assert {name: proc.returncode for name, proc in procs.items()} == dict.fromkeys(procs, 0)
    assert outputs == {"chief-0": "chief 0 3 6", "worker-0": "worker 0 3 6", "worker-1": "worker 1 3 6"}
