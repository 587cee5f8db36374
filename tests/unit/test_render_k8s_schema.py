"""Everything ``render`` emits is a valid Kubernetes object (the strict 1.37 OpenAPI schema).

Run for every installed framework plugin (the real PyTorch, TensorFlow, MXNet, JAX and XGBoost
ones once installed) and for a small framework defined here, in the shapes people use, with a template that
exercises what render adds or merges: ports, env, labels, annotations, restart policies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kubernetes_validate
import pytest

from mljob import Cluster, Framework, MLJob, Replica, Role, hookimpl
from mljob.api import RestartPolicy
from mljob.core.render import render
from mljob.core.schema import object_problems
from mljob.core.validation import check_job
from mljob.plugins import Plugins, load_plugins


class Toy(Framework):
    """A framework defined in the test, so this file also runs where no plugin is installed."""

    name = "toy"
    roles = (
        Role("Leader", default_port=5000, leader=True, max_replicas=1),
        Role("Worker", default_port=5001),
        Role("Store", default_port=5002, runs_until_stopped=True),
    )
    reserved_env = frozenset({"TOY_PEERS"})
    port_name = "toy-port"

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        peers = [
            str(cluster.address(Replica(role, i)))
            for role, spec in job.spec.replica_specs.items()
            for i in range(spec.replicas)
        ]
        return {"TOY_PEERS": ",".join(peers), "TOY_ROLE": replica.role}


class ToyPlugin:
    @hookimpl
    def mljob_register_frameworks(self, register):
        register(Toy())


class SidecarPlugin:
    """A cross-cutting plugin: its pod mutation must keep the pod valid too."""

    @hookimpl
    def mljob_mutate_pod(self, job, replica, pod):
        pod["spec"]["containers"].append({"name": "log-shipper", "image": "fluent/fluent-bit:3"})
        pod["metadata"]["labels"]["example.com/team"] = "ml"


SHAPES: dict[str, list[dict[str, int]]] = {
    "pytorch": [{"Master": 1, "Worker": 3}, {"Worker": 2}],
    "tensorflow": [{"Chief": 1, "Worker": 2, "PS": 2, "Evaluator": 1}, {"Worker": 1}],
    "mxnet": [{"Scheduler": 1, "Server": 2, "Worker": 3}],
    "jax": [{"Worker": 3}, {"Worker": 1}],
    "xgboost": [{"Master": 1, "Worker": 2}, {"Worker": 2}],
    "toy": [{"Leader": 1, "Worker": 2, "Store": 1}, {"Worker": 1}],
}


def plugins() -> Plugins:
    return load_plugins(extra=[ToyPlugin(), SidecarPlugin()])


def rich_template(framework: Framework, role: str) -> dict[str, Any]:
    """A template with a sidecar, resources, a volume, a named port, labels and annotations."""
    main: dict[str, Any] = {
        "name": framework.container_name,
        "image": "registry.example.com/train:1.0",
        "command": ["python", "-m", "train"],
        "args": ["--epochs", "3"],
        "env": [
            {"name": "EPOCHS", "value": "3"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": 1}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "workingDir": "/work",
    }
    if framework.port_name:
        main["ports"] = [{"name": framework.port_name, "containerPort": 7777}]
    return {
        "metadata": {"labels": {"app": "train", "role": role.lower()}, "annotations": {"example.com/owner": "ml"}},
        "spec": {
            "containers": [main, {"name": "metrics", "image": "prom/statsd-exporter:v0.26.0"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def make_job(framework: Framework, roles: dict[str, int], *, rich: bool, policy: RestartPolicy | None) -> MLJob:
    specs: dict[str, Any] = {}
    for role, count in roles.items():
        template = (
            rich_template(framework, role)
            if rich
            else {"spec": {"containers": [{"name": framework.container_name, "image": "busybox"}]}}
        )
        specs[role] = {"replicas": count, "template": template}
        if policy is not None:
            specs[role]["restartPolicy"] = policy.value
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {
                "name": f"{framework.name}-job",
                "namespace": "team-a",
                "uid": "5f0c9a5e-2b8e-4e0c-9a53-1b2c3d4e5f60",
            },
            "spec": {
                "framework": framework.name,
                "replicaSpecs": specs,
                "runPolicy": {"schedulingPolicy": {"priorityClass": "high", "minAvailable": 1}},
            },
        }
    )


def case_id(framework: str, roles: dict[str, int], rich: bool, policy: RestartPolicy | None) -> str:
    shape = "-".join(f"{role}{count}" for role, count in roles.items())
    return f"{framework}-{shape}-{'rich' if rich else 'plain'}-{policy or 'default'}"


CASES = [
    pytest.param(framework, roles, rich, policy, id=case_id(framework, roles, rich, policy))
    for framework, shapes in SHAPES.items()
    for roles in shapes
    for rich, policy in [(False, None), (True, RestartPolicy.EXIT_CODE), (True, RestartPolicy.ALWAYS)]
]


def validate_strict(obj: dict[str, Any]) -> None:
    """kubernetes_validate's strict check, with a short failure message instead of the whole schema."""
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), "1.37", strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {where}: {error.message}")


@pytest.mark.parametrize(("framework_name", "roles", "rich", "policy"), CASES)
def test_every_rendered_object_is_valid_kubernetes(framework_name, roles, rich, policy):
    loaded = plugins()
    framework = loaded.framework(framework_name)
    assert framework is not None, f"mljob-{framework_name} is not installed: make setup"
    job = make_job(framework, roles, rich=rich, policy=policy)
    checked = check_job(job, loaded)
    assert checked.ok, checked.problems
    objects = render(job, framework, loaded)
    assert [o["kind"] for o in objects] == ["Pod"] * sum(roles.values()) + ["Service"]
    for obj in objects:
        validate_strict(obj)
        assert object_problems(obj) == [], obj["metadata"]["name"]


def test_placeholder_owner_uid_is_valid_too():
    loaded = plugins()
    framework = loaded.framework("toy")
    assert framework is not None
    job = MLJob.model_validate(
        {**make_job(framework, {"Worker": 1}, rich=False, policy=None).to_dict(), "metadata": {"name": "toy"}}
    )
    for obj in render(job, framework, loaded):
        validate_strict(obj)


def test_all_real_frameworks_are_covered():
    """Guards the matrix: a newly installed framework shows up here until SHAPES covers it."""
    missing = sorted(set(load_plugins().frameworks) - set(SHAPES))
    assert not [name for name in missing if name in ("pytorch", "tensorflow", "mxnet", "jax", "xgboost")], missing


def test_object_problems_reports_an_invalid_pod():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "imag": "b"}]},
    }
    problems = [str(p) for p in object_problems(pod)]
    assert problems == ["spec.containers[0].imag: unknown field; did you mean 'image'?"]
    assert [str(p) for p in object_problems({"apiVersion": "example.com/v1", "kind": "Widget"})] == [
        "kind: no Kubernetes v1.37.0-local-strict schema for example.com/v1 Widget"
    ]
