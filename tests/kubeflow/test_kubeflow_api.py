"""The Kubeflow v1 models: Kubeflow's own examples parse, the server's objects parse, the kinds table is Kubeflow's."""

from __future__ import annotations

import re

import pydantic
import pytest

from mljob.core.kubeflow.api import (
    JOBS,
    JobConditionType,
    PyTorchJob,
    RestartPolicy,
    TFJob,
    parse,
    unknown_fields,
)
from mljob.core.kubeflow.kinds import BY_PLURAL, KINDS
from tests.kubeflow.kubeflow_source import ALL_KINDS, examples, go_source


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kubeflows_examples_parse_with_no_unknown_field(kind):
    found = examples(KINDS[kind])
    assert found, f"no {kind} example in Kubeflow's module"
    for path, doc in found:
        job = parse(doc)
        assert isinstance(job, JOBS[kind]), path
        assert list(unknown_fields(job)) == [], path
        # The wire form parses back to the same model (what the operator writes, it can read).
        assert JOBS[kind].model_validate(job.to_dict()) == job, path


def test_examples_cover_every_kind_with_the_fields_that_matter():
    """The examples exercise more than replica specs: elastic policies with metrics, run policies, MXTune."""
    seen = {kind: [doc for _, doc in examples(KINDS[kind])] for kind in ALL_KINDS}
    pytorch = [parse(doc) for doc in seen["PyTorchJob"]]
    assert any(j.spec and getattr(j.spec, "elastic_policy", None) for j in pytorch)
    assert any(doc["spec"].get("jobMode") == "MXTune" for doc in seen["MXJob"])


SERVER_TFJOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "TFJob",
    "metadata": {
        "name": "dist-mnist",
        "namespace": "ml",
        "uid": "6c9d8e0a-0000-4000-8000-000000000001",
        "resourceVersion": "812",
        "generation": 1,
        "creationTimestamp": "2025-03-01T10:00:00Z",
        "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
    },
    "spec": {
        "runPolicy": {
            "cleanPodPolicy": "None",
            "suspend": False,
            "schedulingPolicy": {"minAvailable": 3, "queue": "q", "minResources": {"cpu": "3", "memory": 2048}},
            "managedBy": "kubeflow.org/training-operator",
        },
        "successPolicy": "",
        "tfReplicaSpecs": {
            "PS": {"replicas": 1, "restartPolicy": "Never", "template": {"metadata": {}, "spec": {"containers": []}}},
            "Worker": {"replicas": 2, "restartPolicy": "ExitCode", "template": {"spec": {"containers": []}}},
        },
    },
    "status": {
        "conditions": [
            {
                "type": "Created",
                "status": "True",
                "reason": "TFJobCreated",
                "message": "TFJob ml/dist-mnist is created.",
                "lastUpdateTime": "2025-03-01T10:00:00Z",
                "lastTransitionTime": "2025-03-01T10:00:00Z",
            },
            {
                "type": "Running",
                "status": "True",
                "reason": "TFJobRunning",
                "lastTransitionTime": "2025-03-01T10:00:05Z",
            },
        ],
        "replicaStatuses": {
            "PS": {"active": 1, "selector": "training.kubeflow.org/job-name=dist-mnist"},
            "Worker": {
                "active": 2,
                "labelSelector": {
                    "matchLabels": {"training.kubeflow.org/replica-type": "worker"},
                    "matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}],
                },
            },
        },
        "startTime": "2025-03-01T10:00:01Z",
        "lastReconcileTime": "2025-03-01T10:00:05Z",
    },
}


def test_an_object_as_the_server_holds_it_round_trips():
    job = TFJob.model_validate(SERVER_TFJOB)
    assert job.name == "dist-mnist"
    assert job.namespace == "ml"
    assert job.spec is not None
    assert set(job.spec.replica_specs) == {"PS", "Worker"}
    assert job.spec.replica_specs["Worker"].restart_policy is RestartPolicy.EXIT_CODE
    assert job.status is not None
    assert job.status.conditions is not None
    assert [c.type for c in job.status.conditions] == [JobConditionType.CREATED, JobConditionType.RUNNING]
    assert job.to_dict() == SERVER_TFJOB


def test_unknown_fields_are_kept_and_named():
    doc = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "p"},
        "spec": {
            "pytorchReplicaSpecs": {"Worker": {"replicas": 1, "templates": {}}},
            "runPolicy": {"backofLimit": 3},
            "elasticPolicy": {"rdzvConf": [{"key": "a", "vaule": "b"}]},
        },
        "extra": 1,
    }
    job = PyTorchJob.model_validate(doc)
    assert list(unknown_fields(job)) == [
        "extra",
        "spec.runPolicy.backofLimit",
        "spec.elasticPolicy.rdzvConf[0].vaule",
        "spec.pytorchReplicaSpecs.Worker.templates",
    ]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "tfReplicaSpecs", "Worker", "restartPolicy"), "Sometimes"),
        (("spec", "tfReplicaSpecs", "Worker", "replicas"), "2"),
        (("spec", "tfReplicaSpecs", "Worker", "replicas"), 2**31),
        (("spec", "runPolicy", "cleanPodPolicy"), "Some"),
        (("spec", "runPolicy", "suspend"), "yes"),
        (("spec", "runPolicy", "schedulingPolicy", "minResources", "cpu"), "two"),
        (("spec", "runPolicy", "schedulingPolicy", "minResources", "cpu"), "3\n"),
        (("spec", "runPolicy", "schedulingPolicy", "minResources", "cpu"), True),
        (("spec", "successPolicy"), "AnyWorker"),
        (("status", "conditions", 0, "type"), "Done"),
    ],
)
def test_the_models_refuse_what_kubeflow_does_not_define(path, value):
    import copy

    doc = copy.deepcopy(SERVER_TFJOB)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(pydantic.ValidationError):
        TFJob.model_validate(doc)


def test_spec_and_run_policy_are_optional_as_in_kubeflow():
    job = TFJob.model_validate({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "x"}})
    assert job.spec is None
    with_spec = TFJob.model_validate({**job.to_dict(), "spec": {"tfReplicaSpecs": {}}})
    assert with_spec.spec is not None
    assert with_spec.spec.run_policy.suspend is False  # the CRD's one default


def test_parse_picks_the_model_by_kind():
    assert type(parse({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {}})) is TFJob
    with pytest.raises(KeyError):
        parse({"apiVersion": "kubeflow.org/v1", "kind": "MPIJob"})


# --- the kinds table against Kubeflow's Go constants --------------------------------------------------------------


def go_constant(source: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\b\s*(?:\w+\s*)?=\s*(.+?)\s*$", source, re.MULTILINE)
    assert match, f"{name} is not in Kubeflow's source"
    return match.group(1).strip('"')


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_kinds_table_is_kubeflows(kind):
    facts = KINDS[kind]
    source = go_source(facts, "types")
    prefix = kind  # Kubeflow names each kind's constants after it: TFJobDefaultPort, PyTorchJobKind
    assert go_constant(source, f"{prefix}Kind") == facts.kind
    assert go_constant(source, f"{prefix}Plural") == facts.plural
    assert go_constant(source, f"{prefix}Singular") == facts.singular
    assert go_constant(source, f"{prefix}DefaultContainerName") == facts.container_name
    assert go_constant(source, f"{prefix}DefaultPortName") == facts.port_name
    assert int(go_constant(source, f"{prefix}DefaultPort")) == facts.port
    restart = go_constant(source, f"{prefix}DefaultRestartPolicy").removeprefix("RestartPolicy")
    assert restart == facts.restart_policy.value
    assert go_constant(source, f"{prefix}FrameworkName") == facts.framework
    types = re.findall(rf"^\s*{prefix}ReplicaType\w+\s+ReplicaType\s*=\s*\"(\w+)\"", source, re.MULTILINE)
    assert tuple(types) == facts.replica_types
    assert re.search(rf"json:\"{facts.replica_specs_field}\"", source)
    scale = re.search(r"subresource:scale:specpath=\.spec\.(\w+)\.Worker\.replicas", source)
    assert bool(scale) is facts.scale
    assert facts.short_names == ()
    assert facts.api_version == "kubeflow.org/v1"
    assert facts.crd_name == f"{facts.plural}.kubeflow.org"
    assert BY_PLURAL[facts.plural] is facts


def test_the_table_maps_each_kind_to_an_mljob_framework():
    assert {k: f.framework for k, f in KINDS.items()} == {
        "TFJob": "tensorflow",
        "PyTorchJob": "pytorch",
        "MXJob": "mxnet",
        "XGBoostJob": "xgboost",
        "JAXJob": "jax",
        "PaddleJob": "paddle",
    }
    assert {k: str(f.clean_pod_policy) for k, f in KINDS.items()} == dict.fromkeys(KINDS, "None")
