"""Kubeflow's webhook checks as mljob runs them: bad objects -> exact problems, good ones -> none, managedBy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from mljob.core.kubeflow.admission import DNS1035_MESSAGE, managed_elsewhere, review, warnings
from mljob.core.kubeflow.api import TFJob
from mljob.core.kubeflow.kinds import KINDS
from tests.kubeflow.kubeflow_source import ALL_KINDS, examples

IMAGE = "busybox:1.36"


def container(name: str, image: str | None = IMAGE) -> dict[str, Any]:
    return {"name": name} | ({"image": image} if image is not None else {})


def replica(*containers: dict[str, Any], replicas: int | None = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {"containers": list(containers)}}}
    return spec | ({"replicas": replicas} if replicas is not None else {})


GOOD_SPECS: dict[str, dict[str, Any]] = {
    "TFJob": {"tfReplicaSpecs": {"Chief": replica(container("tensorflow")), "PS": replica(container("tensorflow"))}},
    "PyTorchJob": {
        "pytorchReplicaSpecs": {"Master": replica(container("pytorch")), "Worker": replica(container("pytorch"))}
    },
    "MXJob": {
        "jobMode": "MXTrain",
        "mxReplicaSpecs": {
            "Scheduler": replica(container("mxnet")),
            "Server": replica(container("mxnet")),
            "Worker": replica(container("mxnet")),
        },
    },
    "XGBoostJob": {
        "xgbReplicaSpecs": {"Master": replica(container("xgboost")), "Worker": replica(container("xgboost"))}
    },
    "JAXJob": {"jaxReplicaSpecs": {"Worker": replica(container("jax"), replicas=2)}},
    "PaddleJob": {
        "paddleReplicaSpecs": {"Master": replica(container("paddle")), "Worker": replica(container("paddle"))}
    },
}


def good(kind: str, name: str = "job-1") -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ml"},
        "spec": copy.deepcopy(GOOD_SPECS[kind]),
    }


def edited(kind: str, edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    body = good(kind)
    edit(body)
    return body


def specs(body: dict[str, Any]) -> dict[str, Any]:
    specs_field = KINDS[body["kind"]].replica_specs_field
    result: dict[str, Any] = body["spec"][specs_field]
    return result


def run_policy(**fields: Any) -> Callable[[dict[str, Any]], object]:
    return lambda body: body["spec"].setdefault("runPolicy", {}).update(fields)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_good_job_of_each_kind_has_no_problem(kind):
    assert review(kind, good(kind)) == []
    assert review(kind, good(kind), old=good(kind)) == []


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kubeflow_example_passes(kind):
    """Kubeflow's own examples are accepted, but one: a v1alpha1-era file with apiVersion and kind in its pod
    templates, fields a PodTemplateSpec does not have (Kubeflow's CRD prunes them; kubectl's default strict field
    validation refuses them, as mljob does)."""
    refused = {}
    for path, doc in examples(KINDS[kind]):
        if problems := review(kind, doc):
            refused[path] = [str(p) for p in problems]
    expected = {}
    if kind == "XGBoostJob":
        expected["examples/xgboost/smoke-dist/xgboostjob_v1alpha1_rabit_test.yaml"] = [
            f"spec.xgbReplicaSpecs.{role}.template.{field}: unknown field"
            for role in ("Master", "Worker")
            for field in ("apiVersion", "kind")
        ]
    assert refused == expected


NAME_PROBLEM = f'metadata.name: Invalid value: "Job_1": should match: {DNS1035_MESSAGE}'

BAD: list[tuple[str, str, Callable[[dict[str, Any]], object], list[str]]] = [
    # --- every kind: the name (NameIsDNS1035Label) ---
    ("name", "TFJob", lambda b: b["metadata"].update(name="Job_1"), [NAME_PROBLEM]),
    (
        "name-too-long",
        "JAXJob",
        lambda b: b["metadata"].update(name="a" * 64),
        [f'metadata.name: Invalid value: "{"a" * 64}": should match: must be no more than 63 characters'],
    ),
    (
        "name-starts-with-digit",
        "MXJob",
        lambda b: b["metadata"].update(name="1job"),
        [f'metadata.name: Invalid value: "1job": should match: {DNS1035_MESSAGE}'],
    ),
    (
        "name-with-a-final-newline",
        "PaddleJob",
        lambda b: b["metadata"].update(name="job\n"),
        [f'metadata.name: Invalid value: "job\\n": should match: {DNS1035_MESSAGE}'],
    ),
    # --- every kind: runPolicy.managedBy (ValidateRunPolicy) ---
    (
        "managed-by-unknown",
        "PyTorchJob",
        run_policy(managedBy="mljob.io/operator"),
        [
            'spec.runPolicy.managedBy: Unsupported value: "mljob.io/operator": supported values: '
            '"kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"'
        ],
    ),
    (
        "managed-by-empty",
        "JAXJob",
        run_policy(managedBy=""),
        [
            'spec.runPolicy.managedBy: Unsupported value: "": supported values: '
            '"kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"'
        ],
    ),
    # --- the replica specs, every kind ---
    ("no-spec", "TFJob", lambda b: b.pop("spec"), ["spec.tfReplicaSpecs: Required value: must be required"]),
    (
        "no-containers",
        "XGBoostJob",
        lambda b: specs(b)["Worker"]["template"]["spec"].update(containers=[]),
        [
            "spec.xgbReplicaSpecs.Worker.template.spec.containers: Required value: must be specified",
            "spec.xgbReplicaSpecs.Worker.template.spec.containers: Required value: must have at least one container "
            "with name xgboost",
        ],
    ),
    (
        "no-template",
        "JAXJob",
        lambda b: specs(b)["Worker"].pop("template"),
        [
            "spec.jaxReplicaSpecs.Worker.template.spec.containers: Required value: must be specified",
            "spec.jaxReplicaSpecs.Worker.template.spec.containers: Required value: must have at least one container "
            "with name jax",
        ],
    ),
    (
        "no-image",
        "PyTorchJob",
        lambda b: specs(b)["Worker"]["template"]["spec"]["containers"].append(container("sidecar", image=None)),
        ["spec.pytorchReplicaSpecs.Worker.template.spec.containers[1].image: Required value: must be required"],
    ),
    (
        "no-default-container",
        "TFJob",
        lambda b: specs(b)["PS"]["template"]["spec"].update(containers=[container("main")]),
        [
            "spec.tfReplicaSpecs.PS.template.spec.containers: Required value: must have at least one container "
            "with name tensorflow"
        ],
    ),
    (
        "no-default-container-paddle-quotes-it",
        "PaddleJob",
        lambda b: specs(b)["Worker"]["template"]["spec"].update(containers=[container("main")]),
        [
            "spec.paddleReplicaSpecs.Worker.template.spec.containers: Required value: must have at least one "
            'container with name "paddle"'
        ],
    ),
    # --- replica types: exact for PyTorch, XGBoost, JAX, Paddle (Kubeflow's webhooks) ---
    (
        "pytorch-lowercase-type",
        "PyTorchJob",
        lambda b: specs(b).update(worker=specs(b).pop("Worker")),
        ['spec.pytorchReplicaSpecs.worker: Unsupported value: "worker": supported values: "Master", "Worker"'],
    ),
    (
        "jax-master",
        "JAXJob",
        lambda b: specs(b).update(Master=replica(container("jax"))),
        ['spec.jaxReplicaSpecs.Master: Unsupported value: "Master": supported values: "Worker"'],
    ),
    (
        "paddle-unknown-type",
        "PaddleJob",
        lambda b: specs(b).update(PS=replica(container("paddle"))),
        ['spec.paddleReplicaSpecs.PS: Unsupported value: "PS": supported values: "Master", "Worker"'],
    ),
    (
        "xgboost-unknown-type",
        "XGBoostJob",
        lambda b: specs(b).update(Chief=replica(container("xgboost"))),
        ['spec.xgbReplicaSpecs.Chief: Unsupported value: "Chief": supported values: "Master", "Worker"'],
    ),
    # --- replica types: TFJob and MXJob, mljob's check ignoring case ---
    (
        "tf-unknown-type",
        "TFJob",
        lambda b: specs(b).update(Workers=replica(container("tensorflow"))),
        [
            'spec.tfReplicaSpecs.Workers: Unsupported value: "Workers": supported values: '
            '"PS", "Worker", "Chief", "Master", "Evaluator"'
        ],
    ),
    (
        "tf-same-type-twice",
        "TFJob",
        lambda b: specs(b).update(ps=replica(container("tensorflow"))),
        ['spec.tfReplicaSpecs.ps: Duplicate value: "ps": the same replica type as "PS"'],
    ),
    (
        "mx-unknown-type",
        "MXJob",
        lambda b: specs(b).update(Chief=replica(container("mxnet"))),
        [
            'spec.mxReplicaSpecs.Chief: Unsupported value: "Chief": supported values: '
            '"Scheduler", "Server", "Worker", "TunerTracker", "TunerServer", "Tuner"'
        ],
    ),
    (
        "mx-two-schedulers",
        "MXJob",
        lambda b: specs(b).update(scheduler=replica(container("mxnet"))),
        [
            'spec.mxReplicaSpecs.scheduler: Duplicate value: "scheduler": the same replica type as "Scheduler"',
            "spec.mxReplicaSpecs: Forbidden: must not have more than 1 Scheduler role",
        ],
    ),
    # --- replicas bounds ---
    (
        "pytorch-two-masters",
        "PyTorchJob",
        lambda b: specs(b)["Master"].update(replicas=2),
        ["spec.pytorchReplicaSpecs.Master.replicas: Forbidden: must be 1"],
    ),
    (
        "pytorch-master-replicas-unset",
        "PyTorchJob",
        lambda b: specs(b)["Master"].pop("replicas"),
        ["spec.pytorchReplicaSpecs.Master.replicas: Forbidden: must be 1"],
    ),
    (
        "pytorch-no-workers",
        "PyTorchJob",
        lambda b: specs(b)["Worker"].update(replicas=0),
        ["spec.pytorchReplicaSpecs.Worker.replicas: Forbidden: must be at least 1"],
    ),
    (
        "tf-chief-and-master",
        "TFJob",
        lambda b: specs(b).update(Master=replica(container("tensorflow"))),
        ["spec.tfReplicaSpecs: Forbidden: must not have more than 1 Chief or Master role"],
    ),
    (
        "tf-chief-and-master-any-case",
        "TFJob",
        lambda b: specs(b).update(master=replica(container("tensorflow"))),
        ["spec.tfReplicaSpecs: Forbidden: must not have more than 1 Chief or Master role"],
    ),
    (
        "xgboost-no-master",
        "XGBoostJob",
        lambda b: specs(b).pop("Master"),
        ["spec.xgbReplicaSpecs.Master: Required value: must be present"],
    ),
    (
        "xgboost-two-masters",
        "XGBoostJob",
        lambda b: specs(b)["Master"].update(replicas=2),
        ["spec.xgbReplicaSpecs.Master.replicas: Forbidden: must be 1"],
    ),
    # --- PyTorch's elastic policy ---
    (
        "elastic-without-workers",
        "PyTorchJob",
        lambda b: (b["spec"].update(elasticPolicy={"minReplicas": 1}), specs(b).pop("Worker")),
        ["spec.pytorchReplicaSpecs.Worker: Required value: must be configured if elastic policy is used"],
    ),
    (
        "elastic-nproc-twice",
        "PyTorchJob",
        lambda b: b["spec"].update(elasticPolicy={"nProcPerNode": 2}, nprocPerNode="2"),
        ["spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with spec.nprocPerNode"],
    ),
    # --- before the webhook: what the API server refuses (the webhook's checks then do not run) ---
    (
        "bad-restart-policy",
        "TFJob",
        lambda b: (b["metadata"].update(name="Job_1"), specs(b)["PS"].update(restartPolicy="Sometimes")),
        [
            "spec.tfReplicaSpecs.PS.restartPolicy: must be one of 'Always', 'OnFailure', 'Never' or 'ExitCode'; "
            "got 'Sometimes'"
        ],
    ),
    (
        "replicas-quoted",
        "JAXJob",
        lambda b: specs(b)["Worker"].update(replicas="2"),
        ["spec.jaxReplicaSpecs.Worker.replicas: must be an integer, got '2' (quoted, so a string: remove the quotes)"],
    ),
    (
        "template-unknown-field",
        "PaddleJob",
        lambda b: specs(b)["Worker"]["template"]["spec"]["containers"][0].update(imagePolicy="Always"),
        [
            "spec.paddleReplicaSpecs.Worker.template.spec.containers[0].imagePolicy: unknown field; "
            "did you mean 'imagePullPolicy'?"
        ],
    ),
    (
        "mx-no-job-mode",
        "MXJob",
        lambda b: b["spec"].pop("jobMode"),
        ["spec.jobMode: required field is missing"],
    ),
    (
        "wrong-kind",
        "TFJob",
        lambda b: b.update(kind="PyTorchJob"),
        ['kind: must be TFJob, got "PyTorchJob"'],
    ),
    (
        "wrong-api-version",
        "TFJob",
        lambda b: b.update(apiVersion="kubeflow.org/v1beta2"),
        ['apiVersion: must be kubeflow.org/v1, got "kubeflow.org/v1beta2"'],
    ),
]


@pytest.mark.parametrize(("case", "kind", "edit", "expected"), BAD, ids=[row[0] for row in BAD])
def test_bad_objects_get_exactly_these_problems(case, kind, edit, expected):
    assert [str(p) for p in review(kind, edited(kind, edit))] == expected


def test_the_status_is_not_reviewed():
    """The status subresource: the API server ignores a status sent with the object, so the review does too."""
    body = good("TFJob") | {"status": {"conditions": [{"type": "Done"}]}}
    assert review("TFJob", body) == []


def test_an_unknown_kind_is_named():
    assert [str(p) for p in review("MPIJob", {})] == [
        "kind: 'MPIJob' is not a Kubeflow kind mljob serves (TFJob, PyTorchJob, MXJob, XGBoostJob, JAXJob, PaddleJob)"
    ]


def test_a_body_that_is_not_a_mapping():
    assert [str(p) for p in review("TFJob", ["a"])] == ["a TFJob is a mapping, got list"]


def test_tf_replica_types_ignore_case_as_kubeflows_controller_renames_them():
    body = edited("TFJob", lambda b: specs(b).update(worker=replica(container("tensorflow")), evaluator=replica()))
    assert [str(p) for p in review("TFJob", body)] == [
        "spec.tfReplicaSpecs.evaluator.template.spec.containers: Required value: must be specified",
        "spec.tfReplicaSpecs.evaluator.template.spec.containers: Required value: must have at least one container "
        "with name tensorflow",
    ]


# --- runPolicy.managedBy ---------------------------------------------------------------------------------------------

MULTIKUEUE = "kueue.x-k8s.io/multikueue"
KUBEFLOW = "kubeflow.org/training-operator"


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("value", [KUBEFLOW, MULTIKUEUE])
def test_both_of_kubeflows_managed_by_values_are_accepted(kind, value):
    assert review(kind, edited(kind, run_policy(managedBy=value))) == []


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, None, []),
        (MULTIKUEUE, MULTIKUEUE, []),
        (None, MULTIKUEUE, [f'spec.runPolicy.managedBy: Invalid value: "{MULTIKUEUE}": field is immutable']),
        (MULTIKUEUE, None, ["spec.runPolicy.managedBy: Invalid value: null: field is immutable"]),
        (KUBEFLOW, MULTIKUEUE, [f'spec.runPolicy.managedBy: Invalid value: "{MULTIKUEUE}": field is immutable']),
        (None, KUBEFLOW, [f'spec.runPolicy.managedBy: Invalid value: "{KUBEFLOW}": field is immutable']),
        (
            MULTIKUEUE,
            "other",
            [
                'spec.runPolicy.managedBy: Invalid value: "other": field is immutable',
                f'spec.runPolicy.managedBy: Unsupported value: "other": supported values: "{KUBEFLOW}", "{MULTIKUEUE}"',
            ],
        ),
    ],
)
def test_managed_by_is_immutable_on_update(kind, before, after, expected):
    old = good(kind) if before is None else edited(kind, run_policy(managedBy=before))
    new = good(kind) if after is None else edited(kind, run_policy(managedBy=after))
    assert [str(p) for p in review(kind, new, old=old)] == expected
    # Other changes stay allowed: the webhook guards only managedBy.
    assert review(kind, edited(kind, run_policy(suspend=True, backoffLimit=2)), old=good(kind)) == []


@pytest.mark.parametrize(
    ("body", "elsewhere"),
    [
        ({}, False),
        ({"spec": None}, False),
        ({"spec": {"runPolicy": {}}}, False),
        ({"spec": {"runPolicy": {"managedBy": KUBEFLOW}}}, False),
        ({"spec": {"runPolicy": {"managedBy": MULTIKUEUE}}}, True),
        ({"spec": {"runPolicy": {"managedBy": "example.com/other"}}}, True),
        ({"spec": {"runPolicy": {"managedBy": ""}}}, True),
    ],
)
def test_managed_elsewhere(body, elsewhere):
    assert managed_elsewhere(body) is elsewhere


def test_managed_elsewhere_takes_a_parsed_job_too():
    assert managed_elsewhere(TFJob.model_validate(edited("TFJob", run_policy(managedBy=MULTIKUEUE)))) is True
    assert managed_elsewhere(TFJob.model_validate(good("TFJob"))) is False


# --- warnings --------------------------------------------------------------------------------------------------------


def test_elastic_nproc_per_node_alone_is_a_warning():
    body = edited("PyTorchJob", lambda b: b["spec"].update(elasticPolicy={"nProcPerNode": 2}))
    assert review("PyTorchJob", body) == []
    assert warnings("PyTorchJob", body) == [
        "spec.elasticPolicy.nProcPerNode is deprecated, use spec.nprocPerNode instead"
    ]
    assert warnings("PyTorchJob", good("PyTorchJob")) == []
    assert warnings("TFJob", good("TFJob")) == []


def test_elastic_hpa_metrics_are_admitted_with_a_warning_that_mljob_makes_no_autoscaler():
    metrics = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]
    body = edited("PyTorchJob", lambda b: b["spec"].update(elasticPolicy={"maxReplicas": 3, "metrics": metrics}))
    assert review("PyTorchJob", body) == []
    assert warnings("PyTorchJob", body) == [
        "spec.elasticPolicy.metrics: mljob creates no HorizontalPodAutoscaler; create your own with scaleTargetRef "
        "this PyTorchJob (its scale subresource), within minReplicas and maxReplicas"
    ]
