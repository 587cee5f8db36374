"""`mljob convert`: Kubeflow's own example jobs (rewritten here from their published examples and docs) become
MLJobs that validate and render; what cannot be carried over is named with its path in the Kubeflow file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mljob.cli.app import app
from mljob.core.convert import convert as convert_document
from mljob.core.render import render
from mljob.core.validation import check_document
from mljob.plugins import load_plugins

KUBEFLOW = Path(__file__).resolve().parents[1] / "convert" / "kubeflow"


def convert(runner: Any, name: str) -> tuple[int, list[dict[str, Any]], list[str]]:
    result = runner.invoke(app, ["convert", str(KUBEFLOW / name)])
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.stdout.strip() else []
    return result.exit_code, docs, [line for line in result.stderr.splitlines() if line]


def spec_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = docs
    assert job["apiVersion"] == "mljob.io/v1alpha1"
    assert job["kind"] == "MLJob"
    checked = check_document(job, load_plugins())
    assert checked.ok, [str(p) for p in checked.problems]
    assert checked.job is not None
    assert checked.framework is not None
    assert render(checked.job, checked.framework, load_plugins(), uid="u")  # it renders, too
    return dict(job["spec"])


def test_a_tensorflow_ps_worker_job(runner):
    code, docs, notes = convert(runner, "tf-dist-mnist.yaml")
    assert code == 0
    assert notes == []
    spec = spec_of(docs)
    assert spec["framework"] == "tensorflow"
    assert {r: (s["replicas"], s["restartPolicy"]) for r, s in spec["replicaSpecs"].items()} == {
        "PS": (2, "Never"),
        "Worker": (4, "Never"),
    }
    assert spec["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"] == (
        "kubeflow/tf-dist-mnist-test:latest"
    )


def test_run_policy_success_policy_and_role_case_are_carried_and_the_rest_named(runner):
    code, docs, notes = convert(runner, "tf-estimator.yaml")
    assert code == 0
    spec = spec_of(docs)
    assert docs[0]["metadata"] == {"name": "tf-estimator", "namespace": "research", "labels": {"team": "vision"}}
    assert set(spec["replicaSpecs"]) == {"Chief", "PS", "Worker", "Evaluator"}  # `ps` is PS
    assert spec["replicaSpecs"]["Chief"]["restartPolicy"] == "ExitCode"
    assert spec["frameworkOptions"] == {"successPolicy": "AllWorkers"}
    assert spec["runPolicy"] == {
        "cleanPodPolicy": "None",  # from spec level, as older releases had it
        "backoffLimit": 3,
        "ttlSecondsAfterFinished": 600,
        "schedulingPolicy": {"minAvailable": 4, "queue": "research"},
    }
    assert notes == [
        "not carried over: status: the Kubeflow operator's status: the MLJob operator writes its own",
        "not carried over: spec.enableDynamicWorker: TFJob's enableDynamicWorker has no MLJob equivalent",
    ]


def test_a_pytorch_master_worker_job(runner):
    code, docs, notes = convert(runner, "pytorch-mnist-gloo.yaml")
    assert code == 0
    assert notes == []
    spec = spec_of(docs)
    assert spec["framework"] == "pytorch"
    assert spec["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"] == ["--backend", "gloo"]
    assert spec["replicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"


def test_elastic_pytorch_carries_its_elastic_policy(runner):
    code, docs, notes = convert(runner, "pytorch-elastic-echo.yaml")
    assert code == 0
    assert notes == []
    spec = spec_of(docs)
    assert spec["frameworkOptions"] == {
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 1, "maxReplicas": 2, "maxRestarts": 100,
                          "nProcPerNode": 2},
    }  # fmt: skip


def test_elastic_pytorch_names_its_hpa_metrics_as_not_carried_over(runner):
    code, docs, notes = convert(runner, "pytorch-elastic-imagenet.yaml")
    assert code == 0
    spec = spec_of(docs)
    assert spec["frameworkOptions"] == {
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 1, "maxReplicas": 3, "maxRestarts": 100},
    }
    assert notes == [
        "not carried over: spec.elasticPolicy.metrics: mljob creates no HorizontalPodAutoscaler: point your own at "
        "the job's scale subresource (scaleTargetRef the MLJob; kubectl scale works too), within minReplicas and "
        "maxReplicas"
    ]


@pytest.mark.parametrize(
    ("policy", "bounds"),
    [({}, (3, 3)), ({"minReplicas": 2}, (2, 2)), ({"maxReplicas": 4}, (4, 4)), ({"minReplicas": 1, "maxReplicas": 5},
                                                                              (1, 5))],
)  # fmt: skip
def test_elastic_bounds_are_written_out_as_kubeflows_defaulter_stores_them(policy, bounds):
    worker = {"replicas": 3, "template": {"spec": {"containers": [{"name": "pytorch", "image": "i"}]}}}
    doc = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "e"},
           "spec": {"elasticPolicy": policy, "pytorchReplicaSpecs": {"worker": worker}}}  # fmt: skip
    converted = convert_document(doc)
    assert converted.dropped == converted.problems == []
    assert converted.job is not None
    elastic = converted.job["spec"]["frameworkOptions"]["elasticPolicy"]
    assert (elastic["minReplicas"], elastic["maxReplicas"]) == bounds


def test_a_standalone_elastic_policy_is_named():
    worker = {"replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "image": "i"}]}}}
    doc = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "e"},
           "spec": {"elasticPolicy": {"standalone": True}, "pytorchReplicaSpecs": {"Worker": worker}}}  # fmt: skip
    converted = convert_document(doc)
    assert [d.path for d in converted.dropped] == ["spec.elasticPolicy.standalone"]
    assert converted.job is not None
    assert converted.job["spec"]["frameworkOptions"] == {"elasticPolicy": {"minReplicas": 1, "maxReplicas": 1}}


def test_an_mxnet_training_job(runner):
    code, docs, notes = convert(runner, "mxnet-train.yaml")
    assert code == 0
    assert notes == []
    spec = spec_of(docs)
    assert spec["framework"] == "mxnet"
    assert list(spec["replicaSpecs"]) == ["Scheduler", "Server", "Worker"]
    assert "frameworkOptions" not in spec  # jobMode MXTrain is what an MLJob does


def test_an_mxnet_tuning_job_cannot_be_carried_over_and_says_every_part(runner):
    code, docs, notes = convert(runner, "mxnet-tune.yaml")
    assert code == 1
    assert docs == []
    for path in ("spec.mxReplicaSpecs.TunerTracker", "spec.mxReplicaSpecs.TunerServer", "spec.mxReplicaSpecs.Tuner",
                 "spec.jobMode"):  # fmt: skip
        assert any(f"not carried over: {path}:" in n for n in notes), (path, notes)
    assert any(n.startswith("the converted MLJob is invalid: spec.replicaSpecs:") for n in notes), notes


def test_the_oldest_v1alpha1_tfjob_with_its_list_of_typed_replicas(runner):
    code, docs, notes = convert(runner, "tf-v1alpha1.yaml")
    assert code == 0
    spec = spec_of(docs)
    assert {r: (s["replicas"], s["restartPolicy"]) for r, s in spec["replicaSpecs"].items()} == {
        "Chief": (1, "OnFailure"),  # MASTER is the chief; the pod's restartPolicy is the replica's
        "Worker": (1, "OnFailure"),
        "PS": (2, "OnFailure"),
    }
    assert "restartPolicy" not in spec["replicaSpecs"]["PS"]["template"]["spec"]
    assert [n.split(": ")[1] for n in notes] == ["spec.replicaSpecs[2].tfPort"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"apiVersion": "batch/v1", "kind": "Job"}, "kind: not a Kubeflow job (batch/v1 Job)"),
        ({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "spec": {}}, "spec.pytorchReplicaSpecs: missing"),
    ],
)
def test_what_is_not_a_kubeflow_job_is_refused_with_its_path(runner, tmp_path, doc, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["convert", str(path)])
    assert result.exit_code == 1
    assert message in result.stderr, result.stderr
