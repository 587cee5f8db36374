"""A framework's per-job objects (:meth:`Framework.objects`): rendered into the job's namespace with its labels and
owner, created before any pod and only while pods are missing, and a framework that breaks the contract fails its
own job only (PluginError)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from mljob import Cluster, Framework, MLJob, Replica, Role, hookimpl
from mljob.core.reconcile import desire, plan
from mljob.core.validation import PLUGIN_ERROR
from mljob.plugin_testing import make_job
from mljob.plugins import Plugins, load_plugins

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Hosts(Framework):
    """Writes its workers' addresses into a ConfigMap, and a key into a Secret, as an MPI job's launcher reads."""

    name = "hosts"
    roles = (Role("Worker", default_port=22, leader=True, min_replicas=1),)
    returns: Sequence[Mapping[str, Any]] | None = None

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {}

    def objects(self, job: MLJob, cluster: Cluster) -> Sequence[Mapping[str, Any]]:
        if self.returns is not None:
            return self.returns
        workers = job.spec.replica_specs["Worker"].replicas
        hosts = "\n".join(str(cluster.address(Replica("Worker", i)).host) for i in range(workers))
        return [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{job.name}-config"},
             "data": {"hostfile": hosts + "\n"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{job.name}-ssh", "labels": {"a": "b"}},
             "type": "kubernetes.io/ssh-auth", "stringData": {"ssh-privatekey": "k"}},
        ]  # fmt: skip


def plugins_with(framework: Framework) -> Plugins:
    class Registers:
        @hookimpl
        def mljob_register_frameworks(self, register: Callable[[Framework], None]) -> None:
            register(framework)

    return load_plugins(entry_points=False, extra=[Registers()])


def job_of(framework: Framework) -> MLJob:
    job = make_job(framework, {"Worker": 2}, name="train")
    return job.model_copy(update={"metadata": job.metadata.model_copy(update={"uid": "uid-1"})})


def test_the_objects_are_the_jobs_own():
    framework = Hosts()
    desired = desire(job_of(framework), plugins_with(framework))
    assert desired.ok
    config, secret = desired.objects
    assert config["metadata"]["name"] == "train-config"
    assert config["data"]["hostfile"] == "train-worker-0.train.default.svc\ntrain-worker-1.train.default.svc\n"
    for obj in desired.objects:
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["labels"]["mljob.io/job-name"] == "train"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    assert secret["metadata"]["labels"]["a"] == "b"  # the framework's own labels kept
    assert desired.placement == ()  # not the gang's: never deleted when the job finishes, gone with the job


def test_they_are_created_before_the_pods_and_only_while_pods_are_missing():
    framework = Hosts()
    job = job_of(framework)
    desired = desire(job, plugins_with(framework))
    first = plan(job, desired, [], None, NOW)
    kinds = [c["kind"] for c in first.creates]
    assert kinds[:2] == ["ConfigMap", "Secret"]
    assert kinds.count("Pod") == 2
    running = [{**p, "status": {"phase": "Running"}} for p in desired.pods]
    again = plan(job, desired, running, desired.service, NOW)
    assert [c["kind"] for c in again.creates] == []


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "train-x"}}], "only v1 ConfigMap and Secret"),
        ([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}], "must start with the job's name"),
    ],
)
def test_an_object_against_the_contract_fails_the_job_as_the_plugins_error(returned, message):
    framework = Hosts()
    framework.returns = returned
    desired = desire(job_of(framework), plugins_with(framework))
    assert desired.reason == PLUGIN_ERROR
    assert "plugin 'hosts' failed in objects" in str(desired.problems[0])
    assert message in str(desired.problems[0])


def test_a_framework_without_objects_renders_none():
    class Plain(Hosts):
        name = "plain"

        def objects(self, job: MLJob, cluster: Cluster) -> Sequence[Mapping[str, Any]]:
            return Framework.objects(self, job, cluster)

    desired = desire(job_of(Plain()), plugins_with(Plain()))
    assert desired.ok
    assert desired.objects == ()


class Waits(Hosts):
    """Its Leader starts only once every Worker is Ready (the MPI Operator's WaitForWorkersReady, for its launcher)."""

    name = "waits"
    roles = (
        Role("Leader", default_port=22, leader=True, min_replicas=1, max_replicas=1),
        Role("Worker", default_port=22, min_replicas=1, runs_until_stopped=True),
    )

    def objects(self, job: MLJob, cluster: Cluster) -> Sequence[Mapping[str, Any]]:
        return ()

    def starts_after(self, job: MLJob, replica: Replica) -> tuple[str, ...]:
        return ("Worker",) if replica.role == "Leader" else ()


def _ready(pod: dict[str, Any], ready: bool) -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {**pod, "status": {"phase": "Running", "conditions": [condition]}}


def test_a_replica_that_starts_after_others_waits_for_every_one_of_them_to_be_ready():
    framework = Waits()
    job = make_job(framework, {"Leader": 1, "Worker": 2}, name="mpi")
    job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"uid": "uid-2"})})
    desired = desire(job, plugins_with(framework))
    assert desired.ok, desired.problems
    pods = {p["metadata"]["name"]: p for p in desired.pods}
    first = plan(job, desired, [], None, NOW)
    assert sorted(c["metadata"]["name"] for c in first.creates if c["kind"] == "Pod") == [
        "mpi-worker-0",
        "mpi-worker-1",
    ]
    assert first.status is not None
    assert "mpi-leader-0 waits for its peers to be ready: 0 of 2 Worker ready" in str(first.status)
    one_ready = [_ready(pods["mpi-worker-0"], True), _ready(pods["mpi-worker-1"], False)]
    second = plan(job, desired, one_ready, desired.service, NOW)
    assert [c for c in second.creates if c["kind"] == "Pod"] == []
    all_ready = [_ready(pods["mpi-worker-0"], True), _ready(pods["mpi-worker-1"], True)]
    third = plan(job, desired, all_ready, desired.service, NOW)
    assert [c["metadata"]["name"] for c in third.creates if c["kind"] == "Pod"] == ["mpi-leader-0"]
