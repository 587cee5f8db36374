"""MPIJob through the Kubeflow door, pure: conversion between v1 and v2beta1, admission, the children of each style,
and the CRD against the MPI Operator's and training-operator's own.

Expected values are the MPI Operator v0.8.0's (``validation.go``, ``newWorker``, ``newLauncherPodTemplate``,
``newJobService``, ``manifests/base/kubeflow.org_mpijobs.yaml``) and training-operator v1.8.1's (``mpi_types.go``,
``pkg/controller.v1/mpi``, ``manifests/base/crds/kubeflow.org_mpijobs.yaml``), read from the Go module cache.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mljob.core.convert import convert
from mljob.core.desired import desire
from mljob.core.kubeflow import mpijob
from mljob.core.kubeflow.crd import mpijob_crd
from mljob.core.kubeflow.door import KUBEFLOW_KINDS, SSHD
from mljob.core.kubeflow.kinds import MPIJOB
from mljob.core.validation import parse_job
from mljob.operator.webhook import review as webhook_review
from mljob.plugins import load_plugins
from tests.kubeflow.kubeflow_source import gomodcache, kubeflow_crd
from tests.kubeflow.test_kubeflow_crds import EXTRAS, differences

PLUGINS = load_plugins()
DOOR = KUBEFLOW_KINDS["MPIJob"]
MPI_OPERATOR = "github.com/kubeflow/mpi-operator@v0.8.0"


def mpi_operator() -> Path:
    """The MPI Operator v0.8.0's module (a dependency of Kueue: `make controlplane` downloads it)."""
    root = gomodcache() / MPI_OPERATOR
    if not (root / "manifests").is_dir():
        pytest.fail(f"the MPI Operator v0.8.0 is not in the Go module cache ({root}); `make controlplane` fetches it")
    return root


def pi() -> dict[str, Any]:
    """The MPI Operator's own published example, ``examples/v2beta1/pi/pi.yaml``."""
    doc: dict[str, Any] = yaml.safe_load((mpi_operator() / "examples" / "v2beta1" / "pi" / "pi.yaml").read_text())
    doc["metadata"] |= {"namespace": "team", "uid": "u-1", "generation": 1}
    return doc


def v1_job(**spec: Any) -> dict[str, Any]:
    """A v1 MPIJob as Kubeflow's e2e suite makes it (test_e2e_mpijob.py): the worker container has no command."""
    launcher = {"name": "mpi", "image": "horovod/horovod:0.28.1", "command": ["mpirun"], "args": ["-np", "1", "x"]}
    worker = {"name": "mpi", "image": "horovod/horovod:0.28.1"}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "MPIJob",
        "metadata": {"name": "mpijob-pytorch-ci-test", "namespace": "team", "uid": "u-2", "generation": 1},
        "spec": {
            "slotsPerWorker": 1,
            "runPolicy": {"cleanPodPolicy": "None"},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [launcher]}}},
                "Worker": {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [worker]}}},
            },
            **spec,
        },
    }


def stored(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the API server stores it: v2beta1, through the conversion webhook where it came as v1."""
    return mpijob.convert_object(body, mpijob.V2BETA1)


def rendered(body: dict[str, Any]) -> Any:
    view, problems = DOOR.view(stored(body))
    assert problems == []
    job, unparsed = parse_job(dict(view))
    assert job is not None, unparsed
    return desire(job, PLUGINS, kind=DOOR)


# --- conversion ------------------------------------------------------------------------------------------------------


def test_v1_to_v2beta1_and_back_loses_nothing_and_marks_the_job_as_made_with_v1() -> None:
    original = v1_job(cleanPodPolicy="Running", mainContainer="mpi")
    as_v2 = stored(original)
    assert as_v2["apiVersion"] == "kubeflow.org/v2beta1"
    assert "mainContainer" not in as_v2["spec"]
    assert "cleanPodPolicy" not in as_v2["spec"]
    annotations = as_v2["metadata"]["annotations"]
    assert annotations[mpijob.CREATED_AS] == "kubeflow.org/v1"
    assert json.loads(annotations[mpijob.V1_FIELDS]) == {"cleanPodPolicy": "Running", "mainContainer": "mpi"}
    back = mpijob.convert_object(as_v2, mpijob.V1)
    expected = copy.deepcopy(original)
    expected["metadata"]["annotations"] = {mpijob.CREATED_AS: "kubeflow.org/v1"}
    assert back == expected


def test_v2beta1_to_v1_and_back_keeps_v2beta1s_fields_that_are_not_at_their_defaults() -> None:
    job = pi()
    job["spec"] |= {"launcherCreationPolicy": "WaitForWorkersReady", "mpiImplementation": "OpenMPI"}
    as_v1 = mpijob.convert_object(job, mpijob.V1)
    assert as_v1["apiVersion"] == "kubeflow.org/v1"
    assert not {"sshAuthMountPath", "launcherCreationPolicy", "mpiImplementation"} & set(as_v1["spec"])
    kept = json.loads(as_v1["metadata"]["annotations"][mpijob.V2BETA1_FIELDS])
    assert kept == {"launcherCreationPolicy": "WaitForWorkersReady", "sshAuthMountPath": "/home/mpiuser/.ssh"}
    assert as_v1["metadata"]["annotations"][mpijob.CREATED_AS] == "kubeflow.org/v2beta1"
    back = mpijob.convert_object(as_v1, mpijob.V2BETA1)
    defaulted = {k: v for k, v in job["spec"].items() if k != "mpiImplementation"}  # the CRD's default comes back
    assert back["spec"] == defaulted
    # a v1 update of a v2beta1 job keeps its style: the mark the v1 view carried goes back with it
    assert mpijob.style_of(back["metadata"]) is mpijob.V2BETA1_STYLE


def test_the_conversion_review_answers_every_object_or_says_why_not() -> None:
    review = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": "r-1", "desiredAPIVersion": "kubeflow.org/v2beta1", "objects": [v1_job(), pi()]},
    }
    answer = mpijob.conversion_review(review)
    assert answer["kind"] == "ConversionReview"
    assert answer["response"]["uid"] == "r-1"
    assert answer["response"]["result"] == {"status": "Success"}
    assert [o["apiVersion"] for o in answer["response"]["convertedObjects"]] == ["kubeflow.org/v2beta1"] * 2
    review["request"]["desiredAPIVersion"] = "kubeflow.org/v3"
    failed = mpijob.conversion_review(review)["response"]
    assert failed["uid"] == "r-1"
    assert "convertedObjects" not in failed
    assert failed["result"]["status"] == "Failure"
    assert "kubeflow.org/v2beta1 and kubeflow.org/v1" in failed["result"]["message"]


# --- admission -------------------------------------------------------------------------------------------------------


def problems(body: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return webhook_review(body, old, PLUGINS, kind=DOOR)


def test_the_published_examples_and_the_suites_job_are_admitted() -> None:
    assert problems(pi()) == []
    assert problems(stored(v1_job())) == []
    for name in ("pi-intel.yaml", "pi-mpich.yaml"):
        doc = yaml.safe_load((mpi_operator() / "examples" / "v2beta1" / "pi" / name).read_text())
        assert problems(doc) == [], name


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["mpiReplicaSpecs"]["Launcher"].update(replicas=2),
            "spec.mpiReplicaSpecs.Launcher.replicas: Invalid value: 2: must be 1",
        ),
        (
            lambda s: s["mpiReplicaSpecs"].pop("Launcher"),
            "spec.mpiReplicaSpecs.Launcher: Required value: must have Launcher replica spec",
        ),
        (
            lambda s: s["mpiReplicaSpecs"]["Worker"].update(replicas=0),
            "spec.mpiReplicaSpecs.Worker.replicas: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            lambda s: s["mpiReplicaSpecs"]["Worker"].update(restartPolicy="ExitCode"),
            'spec.mpiReplicaSpecs.Worker.restartPolicy: Unsupported value: "ExitCode": supported values: "Never", '
            '"OnFailure"',
        ),
        (
            lambda s: s["mpiReplicaSpecs"]["Worker"]["template"]["spec"].update(containers=[]),
            "spec.mpiReplicaSpecs.Worker.template.spec.containers: Required value: must define at least one container",
        ),
        (
            lambda s: s["mpiReplicaSpecs"].update(Chief=copy.deepcopy(s["mpiReplicaSpecs"]["Worker"])),
            'spec.mpiReplicaSpecs.Chief: Unsupported value: "Chief": supported values: "Launcher", "Worker"',
        ),
        (
            lambda s: s["runPolicy"].update(managedBy="someone/else"),
            'spec.runPolicy.managedBy: Unsupported value: "someone/else": supported values: '
            '"kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue"',
        ),
        (
            lambda s: s["runPolicy"].update(backoffLimit=-1),
            "spec.runPolicy.backoffLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        (lambda s: s.update(mpiImplementation="LAM"), "spec.mpiImplementation: must be one of 'OpenMPI', 'Intel' or"),
        (lambda s: s.update(slotsPerWorker="two"), "spec.slotsPerWorker: "),
    ],
)
def test_a_bad_mpijob_is_refused_with_its_field_path(change: Any, expected: str) -> None:
    job = pi()
    change(job["spec"])
    found = problems(job)
    assert any(line.startswith(expected) for line in found), found


def test_a_name_too_long_for_the_last_workers_hostname_is_refused_as_the_mpi_operator_refuses_it() -> None:
    job = pi()
    job["metadata"]["name"] = "a" * 55  # a-...-worker-1: 64 characters
    (line,) = problems(job)
    assert line.startswith(f'metadata.name: Invalid value: "{"a" * 55}": will not able to create pod and service')
    assert "must be no more than 63 characters" in line


def test_managed_by_may_not_change_and_training_operators_value_is_this_operator_too() -> None:
    old = pi()
    new = copy.deepcopy(old)
    new["spec"]["runPolicy"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    assert problems(new, old) == [
        'spec.runPolicy.managedBy: Invalid value: "kueue.x-k8s.io/multikueue": field is immutable'
    ]
    v1 = stored(v1_job())
    v1["spec"]["runPolicy"]["managedBy"] = "kubeflow.org/training-operator"
    assert problems(v1) == []
    assert DOOR.managed_elsewhere(v1) is None
    assert DOOR.managed_elsewhere(new) == "kueue.x-k8s.io/multikueue"


def test_a_v1_job_keeps_training_operators_own_checks() -> None:
    job = v1_job()
    del job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"]
    assert problems(stored(job)) == [
        "spec.mpiReplicaSpecs.Worker.template.spec.containers[0].image: Required value: must be required"
    ]


def test_what_mljob_does_not_run_is_refused_with_its_path() -> None:
    job = pi()
    job["spec"]["runLauncherAsWorker"] = True
    assert problems(job) == [
        "spec.runLauncherAsWorker: not supported by mljob: the launcher as a worker too has no MLJob equivalent: give "
        "the Worker replicas every slot"
    ]


# --- the children ----------------------------------------------------------------------------------------------------


def test_a_v2beta1_jobs_children_are_named_and_labelled_as_the_mpi_operator_does() -> None:
    desired = rendered(pi())
    assert desired.problems == ()
    assert [p["metadata"]["name"] for p in desired.pods] == ["pi-launcher", "pi-worker-0", "pi-worker-1"]
    launcher, worker = desired.pods[0], desired.pods[1]
    base = {"training.kubeflow.org/job-name": "pi", "training.kubeflow.org/operator-name": "mpi-operator"}
    assert base.items() <= launcher["metadata"]["labels"].items()
    assert launcher["metadata"]["labels"]["training.kubeflow.org/job-role"] == "launcher"
    assert worker["metadata"]["labels"]["training.kubeflow.org/job-role"] == "worker"
    assert worker["metadata"]["labels"]["training.kubeflow.org/replica-index"] == "0"
    (service,) = desired.services  # newJobService: one headless Service named after the job
    assert service["metadata"]["name"] == "pi"
    assert service["spec"]["clusterIP"] == "None"
    assert worker["spec"]["hostname"] == "pi-worker-0"
    assert worker["spec"]["subdomain"] == "pi"
    owner = launcher["metadata"]["ownerReferences"][0]
    assert (owner["apiVersion"], owner["kind"], owner["controller"]) == ("kubeflow.org/v2beta1", "MPIJob", True)
    # the MPI Operator's defaults: the launcher restarts on failure, the workers never; its own command kept
    assert launcher["spec"]["restartPolicy"] == "OnFailure"
    assert worker["spec"]["restartPolicy"] == "Never"
    assert worker["spec"]["containers"][0]["command"] == ["/usr/sbin/sshd"]
    config = next(o for o in desired.objects if o["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == "pi-config"
    assert config["data"]["hostfile"] == "pi-worker-0.pi.team.svc slots=1\npi-worker-1.pi.team.svc slots=1\n"
    mounts = {m["mountPath"] for m in worker["spec"]["containers"][0]["volumeMounts"]}
    assert "/home/mpiuser/.ssh" in mounts  # sshAuthMountPath


def test_a_v1_jobs_children_are_labelled_as_training_operator_does_and_its_workers_run_sshd() -> None:
    desired = rendered(v1_job())
    launcher, worker = desired.pods
    assert launcher["metadata"]["name"] == "mpijob-pytorch-ci-test-launcher"
    labels = launcher["metadata"]["labels"]
    assert labels["training.kubeflow.org/operator-name"] == "mpijob-controller"
    assert labels["training.kubeflow.org/job-role"] == "master"  # what the SDK's and Katib's primary selector ask
    assert labels["training.kubeflow.org/replica-type"] == "launcher"
    assert "training.kubeflow.org/job-role" not in worker["metadata"]["labels"]
    assert worker["spec"]["containers"][0]["command"] == SSHD  # training-operator ran `sleep 365d` for kubectl exec
    assert launcher["spec"]["restartPolicy"] == worker["spec"]["restartPolicy"] == "Never"


def test_the_watch_selector_takes_the_pods_of_both_styles_and_no_other_kinds() -> None:
    assert DOOR.selector() == (
        "training.kubeflow.org/job-name,training.kubeflow.org/operator-name in (mpi-operator,mpijob-controller)"
    )


def test_mljob_convert_turns_the_published_example_into_an_mpi_mljob() -> None:
    converted = convert(pi())
    assert converted.problems == []
    assert converted.dropped == []
    assert converted.job is not None
    spec = converted.job["spec"]
    assert spec["framework"] == "mpi"
    assert spec["frameworkOptions"] == {"slotsPerWorker": 1, "sshAuthMountPath": "/home/mpiuser/.ssh"}
    assert sorted(spec["replicaSpecs"]) == ["Launcher", "Worker"]
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 60}


# --- the CRD ---------------------------------------------------------------------------------------------------------


def version(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(v for v in doc["spec"]["versions"] if v["name"] == name)
    return found


def without_template(node: dict[str, Any]) -> dict[str, Any]:
    root = copy.deepcopy(node["schema"]["openAPIV3Schema"])
    root["properties"]["spec"]["properties"]["mpiReplicaSpecs"]["additionalProperties"]["properties"]["template"] = ""
    return root


def test_v2beta1_is_the_mpi_operators_schema_and_the_stored_version() -> None:
    theirs = yaml.safe_load((mpi_operator() / "manifests" / "base" / "kubeflow.org_mpijobs.yaml").read_text())
    ours = mpijob_crd()
    assert ours["metadata"]["name"] == theirs["metadata"]["name"] == "mpijobs.kubeflow.org"
    assert ours["spec"]["names"] == theirs["spec"]["names"]
    mine, its = version(ours, "v2beta1"), version(theirs, "v2beta1")
    for key in ("served", "storage", "subresources", "additionalPrinterColumns"):
        assert mine.get(key) == its.get(key), key
    assert sorted(differences(without_template(mine), without_template(its))) == sorted(EXTRAS)


def test_v1_is_training_operators_schema_served_beside_it() -> None:
    ours, theirs = mpijob_crd(), kubeflow_crd(MPIJOB)
    mine, its = version(ours, "v1"), version(theirs, "v1")
    assert (mine["served"], mine["storage"], its["storage"]) == (True, False, True)
    assert mine["additionalPrinterColumns"] == its["additionalPrinterColumns"]
    assert mine["subresources"] == its["subresources"]
    allowed = [
        *EXTRAS,
        "spec.runPolicy.managedBy: only in mljob's",  # v1.9's common RunPolicy, which the door honours
        "status.replicaStatuses.*.labelSelector.matchExpressions[].values.x-kubernetes-list-type: only in mljob's",
        "status.replicaStatuses.*.labelSelector.matchExpressions.x-kubernetes-list-type: only in mljob's",
    ]
    assert sorted(differences(without_template(mine), without_template(its))) == sorted(allowed)


def test_the_crd_is_valid_and_converts_nothing_until_the_operator_points_it_at_its_webhook() -> None:
    crd = mpijob_crd()
    kubernetes_validate.validate(crd, "1.37", strict=True)
    assert "conversion" not in crd["spec"]  # the operator sets it; an apply of the file then leaves it alone
    assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == ["v2beta1"]
