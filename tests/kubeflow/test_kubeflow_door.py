"""The Kubeflow front door, pure: a Kubeflow object through the one planner, and what other tools read back.

Every expected value is training-operator v1's (``pkg/controller.v1/common``: ``GenLabels``, ``createNewPod``,
``CreateNewService``, ``util/status.go``), not mljob's own shape.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mljob.core.desired import desire
from mljob.core.kubeflow.door import KUBEFLOW_KINDS, status_patch
from mljob.core.reconcile import plan
from mljob.core.status import merge_diff
from mljob.core.validation import check_job, parse_job
from mljob.framework import Elastic
from mljob.plugins import load_plugins

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PLUGINS = load_plugins()


def pytorchjob(**run_policy: Any) -> dict[str, Any]:
    container = {"name": "pytorch", "image": "kubeflow/pytorch-dist-mnist:latest", "args": ["--epochs", "1"]}
    template = {"spec": {"containers": [container]}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "mnist", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": {
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
                "Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)},
            },
        },
    }


def rendered(body: dict[str, Any], kind: str = "PyTorchJob") -> Any:
    door = KUBEFLOW_KINDS[kind]
    view, problems = door.view(body)
    assert problems == []
    job, unparsed = parse_job(dict(view))
    assert job is not None
    assert unparsed == []
    return job, desire(job, PLUGINS, kind=door)


def test_pods_and_services_are_named_and_labelled_as_training_operator_does() -> None:
    _job, desired = rendered(pytorchjob())
    assert desired.problems == ()
    names = [p["metadata"]["name"] for p in desired.pods]
    assert names == ["mnist-master-0", "mnist-worker-0", "mnist-worker-1"]
    assert [s["metadata"]["name"] for s in desired.services] == names  # one headless service per replica
    master = desired.pods[0]["metadata"]
    assert {k: v for k, v in master["labels"].items() if k.startswith("training.kubeflow.org/")} == {
        "training.kubeflow.org/operator-name": "pytorchjob-controller",
        "training.kubeflow.org/job-name": "mnist",
        "training.kubeflow.org/replica-type": "master",
        "training.kubeflow.org/replica-index": "0",
        "training.kubeflow.org/job-role": "master",
    }
    assert "training.kubeflow.org/job-role" not in desired.pods[1]["metadata"]["labels"]
    assert master["ownerReferences"] == [
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "name": "mnist",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    service = desired.services[1]
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": {
            "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/job-name": "mnist",
            "training.kubeflow.org/replica-type": "worker",
            "training.kubeflow.org/replica-index": "0",
        },
        "ports": [{"name": "pytorchjob-port", "port": 23456}],
    }
    assert "subdomain" not in desired.pods[0]["spec"]  # no job-wide service: each replica has its own


def test_env_names_the_replica_services_as_kubeflow_does() -> None:
    _, desired = rendered(pytorchjob())
    env = {e["name"]: e["value"] for e in desired.pods[2]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "mnist-master-0"
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("2", "3", "23456")


def test_tensorflow_addresses_carry_the_namespace_and_chief_or_worker_0_is_the_master_role() -> None:
    container = {"name": "tensorflow", "image": "tf"}
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "dist", "namespace": "team", "uid": "u-2"},
        "spec": {
            "tfReplicaSpecs": {
                "PS": {"replicas": 1, "template": {"spec": {"containers": [container]}}},
                "Worker": {"replicas": 2, "template": {"spec": {"containers": [container]}}},
            }
        },
    }
    _, desired = rendered(body, "TFJob")
    env = {e["name"]: e["value"] for e in desired.pods[1]["spec"]["containers"][0]["env"]}
    assert json.loads(env["TF_CONFIG"])["cluster"]["ps"] == ["dist-ps-0.team.svc:2222"]
    roles = {p["metadata"]["name"]: p["metadata"]["labels"].get("training.kubeflow.org/job-role") for p in desired.pods}
    assert roles == {"dist-ps-0": None, "dist-worker-0": "master", "dist-worker-1": None}
    assert {p["spec"]["restartPolicy"] for p in desired.pods} == {"Never"}  # TFJob's default restart policy


def test_kubeflow_defaults_apply_clean_pod_policy_none() -> None:
    job, _ = rendered(pytorchjob())
    assert job.spec.run_policy.clean_pod_policy.value == "None"


def test_what_mljob_does_not_offer_is_a_problem_with_the_kubeflow_path() -> None:
    body = elastic_pytorchjob(standalone=True)
    _, problems = KUBEFLOW_KINDS["PyTorchJob"].view(body)
    assert [p.path for p in problems] == ["spec.elasticPolicy.standalone"]
    assert problems[0].message.startswith("not supported by mljob: torchrun's --standalone")


def elastic_pytorchjob(workers: int = 3, **policy: Any) -> dict[str, Any]:
    body = pytorchjob()
    specs = body["spec"]["pytorchReplicaSpecs"]
    del specs["Master"]
    specs["Worker"]["replicas"] = workers
    body["spec"]["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": 1, "maxReplicas": 4, **policy}
    return body


def test_an_elastic_pytorchjob_runs_elastic_with_kubeflows_elastic_env() -> None:
    job, desired = rendered(elastic_pytorchjob(maxRestarts=100))
    assert desired.problems == ()
    assert PLUGINS.framework("pytorch").elastic(job) == Elastic("Worker", 1, 4)
    env = [(e["name"], e["value"]) for e in desired.pods[1]["spec"]["containers"][0]["env"]]
    assert env == [
        ("PYTHONUNBUFFERED", "1"),
        ("PET_NPROC_PER_NODE", "auto"),
        ("PET_RDZV_ENDPOINT", "mnist-worker-0:23456"),  # Kubeflow's host: the Service of worker 0
        ("PET_RDZV_BACKEND", "c10d"),
        ("PET_NNODES", "1:4"),
        ("PET_MAX_RESTARTS", "100"),
        ("PET_RDZV_ID", "mnist"),
        ("PET_RDZV_CONF", "is_host=0"),
        ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),
    ]
    roles = [p["metadata"]["labels"].get("training.kubeflow.org/job-role") for p in desired.pods]
    assert roles == ["master", None, None]  # IsMasterRole: worker 0 without a Master


def test_an_elastic_pytorchjobs_hpa_metrics_run_without_an_autoscaler() -> None:
    metrics = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]
    job, desired = rendered(elastic_pytorchjob(metrics=metrics))
    assert "metrics" not in job.spec.framework_options["elasticPolicy"]
    assert len(desired.pods) == 3


def test_an_elastic_pytorchjobs_problems_name_its_own_fields() -> None:
    door = KUBEFLOW_KINDS["PyTorchJob"]
    body = elastic_pytorchjob(workers=5, rdzvPort=0)
    view, problems = door.view(body)
    assert problems == []  # the plugin's checks run on the MLJob view
    job, _ = parse_job(dict(view))
    assert job is not None
    checked = check_job(job, PLUGINS, gang_may_wait=True)
    assert [door.path_of(p.path) for p in checked.problems] == ["spec.elasticPolicy.rdzvPort"]
    job, _ = parse_job(dict(door.view(elastic_pytorchjob(workers=5))[0]))
    assert job is not None
    assert [door.path_of(p.path) for p in check_job(job, PLUGINS).problems] == [
        "spec.pytorchReplicaSpecs.Worker.replicas"
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("spec.replicaSpecs.Worker.template.spec.containers[0].image", "spec.pytorchReplicaSpecs.Worker.template.spec"
         ".containers[0].image"),
        ("spec.frameworkOptions.nprocPerNode", "spec.nprocPerNode"),
        ("spec.frameworkOptions.elasticPolicy.rdzvConf[0].key", "spec.elasticPolicy.rdzvConf[0].key"),
        ("spec.framework", "kind"),
        ("spec.runPolicy.backoffLimit", "spec.runPolicy.backoffLimit"),
    ],
)  # fmt: skip
def test_problem_paths_name_the_kubeflow_fields(path: str, expected: str) -> None:
    assert KUBEFLOW_KINDS["PyTorchJob"].path_of(path) == expected


def test_managed_by_another_controller_is_left_alone() -> None:
    door = KUBEFLOW_KINDS["PyTorchJob"]
    assert door.managed_elsewhere(pytorchjob()) is None
    assert door.managed_elsewhere(pytorchjob(managedBy="kubeflow.org/training-operator")) is None
    assert door.managed_elsewhere(pytorchjob(managedBy="kueue.x-k8s.io/multikueue")) == "kueue.x-k8s.io/multikueue"


def _pods(desired: Any, phase: str) -> list[dict[str, Any]]:
    pods = []
    for pod in desired.pods:
        p = copy.deepcopy(pod)
        p["metadata"]["uid"] = f"uid-{p['metadata']['name']}"
        state = {"running": {}} if phase == "Running" else {"terminated": {"exitCode": 0, "reason": "Completed"}}
        p["status"] = {"phase": phase, "containerStatuses": [{"name": "pytorch", "restartCount": 0, "state": state}]}
        pods.append(p)
    return pods


def _apply(body: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    from mljob.core.kubeflow.door import _merged

    return {**body, "status": _merged(body.get("status") or {}, patch or {})}


def test_the_status_is_written_in_kubeflows_shape_through_a_whole_run() -> None:
    door = KUBEFLOW_KINDS["PyTorchJob"]
    body = pytorchjob()
    job, desired = rendered(body)

    first = plan(job, desired, [], [], NOW)
    body = _apply(body, status_patch(door, body, first.status, NOW))
    created = body["status"]["conditions"]
    assert [(c["type"], c["status"], c["reason"]) for c in created] == [("Created", "True", "PyTorchJobCreated")]
    assert body["status"]["startTime"] == "2026-01-01T00:00:00Z"
    assert body["status"]["lastReconcileTime"] == "2026-01-01T00:00:00Z"

    later = NOW + timedelta(seconds=5)
    job, _ = rendered(body)
    running = plan(job, desired, _pods(desired, "Running"), desired.services, later)
    body = _apply(body, status_patch(door, body, running.status, later))
    assert [(c["type"], c["status"]) for c in body["status"]["conditions"]] == [
        ("Created", "True"),
        ("Running", "True"),
    ]
    assert body["status"]["replicaStatuses"]["Worker"]["active"] == 2
    assert body["status"]["replicaStatuses"]["Worker"]["selector"] == (
        "training.kubeflow.org/job-name=mnist,training.kubeflow.org/operator-name=pytorchjob-controller,"
        "training.kubeflow.org/replica-type=worker"
    )

    # Nothing changed: no write at all (a status write every pass is Kubeflow's lastReconcileTime; not mljob's).
    job, _ = rendered(body)
    again = plan(job, desired, _pods(desired, "Running"), desired.services, later + timedelta(seconds=1))
    assert status_patch(door, body, again.status, later + timedelta(seconds=1)) is None

    done = later + timedelta(seconds=10)
    finished = plan(job, desired, _pods(desired, "Succeeded"), desired.services, done)
    body = _apply(body, status_patch(door, body, finished.status, done))
    conditions = body["status"]["conditions"]
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("Created", "True", "PyTorchJobCreated"),
        ("Running", "False", "PyTorchJobRunning"),
        ("Succeeded", "True", "PyTorchJobSucceeded"),
    ]  # newest last: kubectl's State column (.status.conditions[-1:].type) reads Succeeded
    assert body["status"]["completionTime"] == "2026-01-01T00:00:15Z"
    assert body["status"]["replicaStatuses"]["Master"] == {
        "succeeded": 1,
        "labelSelector": {
            "matchLabels": {
                "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/job-name": "mnist",
                "training.kubeflow.org/replica-type": "master",
            }
        },
        "selector": "training.kubeflow.org/job-name=mnist,training.kubeflow.org/operator-name=pytorchjob-controller,"
        "training.kubeflow.org/replica-type=master",
    }


def test_a_status_training_operator_wrote_is_read_and_continued() -> None:
    """Migration: training-operator's own status (its reasons, lastUpdateTime) is the planner's starting point."""
    door = KUBEFLOW_KINDS["PyTorchJob"]
    body = pytorchjob()
    body["status"] = {
        "conditions": [
            {"type": "Created", "status": "True", "reason": "PyTorchJobCreated", "message": "PyTorchJob mnist is "
             "created.", "lastUpdateTime": "2025-12-31T23:59:00Z", "lastTransitionTime": "2025-12-31T23:59:00Z"},
            {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "PyTorchJob mnist is "
             "running.", "lastUpdateTime": "2025-12-31T23:59:30Z", "lastTransitionTime": "2025-12-31T23:59:30Z"},
        ],
        "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 2}},
        "startTime": "2025-12-31T23:59:00Z",
        "lastReconcileTime": "2025-12-31T23:59:30Z",
    }  # fmt: skip
    job, desired = rendered(body)
    assert job.status is not None
    assert job.status.start_time == datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    result = plan(job, desired, _pods(desired, "Running"), desired.services, NOW)
    assert result.creates == ()  # every pod and service is there: adopted, none created
    patch = status_patch(door, body, result.status, NOW)
    new = _apply(body, patch)["status"]
    assert merge_diff(body["status"]["conditions"][0], new["conditions"][0]) == {}  # Created kept as written
    assert new["startTime"] == "2025-12-31T23:59:00Z"


def test_a_gang_larger_than_the_job_waits_instead_of_failing() -> None:
    """Kubeflow's gang e2e test creates a job with minAvailable 10 of 2 replicas, then lowers it with a patch."""
    body = pytorchjob()
    body["spec"]["runPolicy"]["schedulingPolicy"] = {"minAvailable": 10}
    door = KUBEFLOW_KINDS["PyTorchJob"]
    view, _ = door.view(body)
    job, _ = parse_job(dict(view))
    assert job is not None
    from mljob.api import GangScheduler
    from mljob.core.desired import Placement

    desired = desire(job, PLUGINS, Placement(default=GangScheduler.COSCHEDULING), kind=door)
    assert desired.problems == ()
    assert [(o["kind"], o["spec"]["minMember"]) for o in desired.placement] == [("PodGroup", 10)]


def test_replicas_still_running_when_the_job_succeeds_count_as_succeeded_as_kubeflow_counts_them() -> None:
    """training-operator's job.go: once the job succeeded, its active replicas are reported succeeded (a PyTorchJob
    succeeds with its master; under cleanPodPolicy None the workers may still be running)."""
    door = KUBEFLOW_KINDS["PyTorchJob"]
    body = pytorchjob()
    job, desired = rendered(body)
    body = _apply(body, status_patch(door, body, plan(job, desired, [], [], NOW).status, NOW))
    job, _ = rendered(body)
    pods = _pods(desired, "Running")
    pods[0] = _pods(desired, "Succeeded")[0]  # the master finished, the workers run on
    done = plan(job, desired, pods, desired.services, NOW + timedelta(seconds=5))
    status = _apply(body, status_patch(door, body, done.status, NOW + timedelta(seconds=5)))["status"]
    assert (condition := status["conditions"][-1])["type"] == "Succeeded"
    assert condition["status"] == "True"
    counts = {
        role: {k: v for k, v in s.items() if k in ("active", "succeeded")}
        for role, s in status["replicaStatuses"].items()
    }
    assert counts == {"Master": {"succeeded": 1}, "Worker": {"succeeded": 2}}
