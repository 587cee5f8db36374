"""Kueue v0.17's own ``kubeflow.org/pytorchjob`` integration over PyTorchJobs that mljob runs (``--kubeflow``): Kueue
makes each job's Workload and flips ``runPolicy.suspend``; mljob creates the pods of the admitted jobs only.

Three PyTorchJobs of one 1-CPU pod each, labelled ``kueue.x-k8s.io/queue-name``, against a 2-CPU quota: two are
admitted and run, the third stays suspended until the first finishes. The jobs are created suspended, as Kueue's
defaulting webhook sets them (its webhooks are not registered on the local control plane; docs/placement-kueue.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.operator.harness import KUEUE, Kube, queue

QUEUE = "research"


@pytest.fixture
def queued(kueue, world) -> Iterator[Any]:
    """A world whose operator (--kubeflow PyTorchJob) starts after Kueue; a 2-CPU ClusterQueue behind ``research``."""
    w = world(operator=False)
    w.operator.extra_args = ["--kubeflow", "PyTorchJob"]
    w.operator.start()
    with queue(w.kube, QUEUE):
        yield w


def one_cpu(name: str) -> dict[str, Any]:
    container = {"name": "pytorch", "image": "busybox:1.36", "resources": {"requests": {"cpu": "1"}}}
    template = {"metadata": {"annotations": {"kwok.mljob.io/runs": "forever"}}, "spec": {"containers": [container]}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
        "spec": {
            "runPolicy": {"suspend": True},
            "pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}},
        },
    }


def job(b: Kube, name: str) -> dict[str, Any]:
    found = b.custom_get("kubeflow.org/v1", "pytorchjobs", name)
    assert found is not None, f"PyTorchJob {name} is gone"
    return found


def true(obj: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or ())


def running(b: Kube, name: str) -> bool:
    pods = b.list("pods", f"training.kubeflow.org/job-name={name}")
    return true(job(b, name), "Running") and [p["status"].get("phase") for p in pods] == ["Running"]


def test_kueue_admits_two_pytorchjobs_of_three_and_the_third_when_the_first_finishes(queued):
    b = queued.kube
    for name in ("a", "b", "c"):
        b.custom.create_namespaced_custom_object("kubeflow.org", "v1", b.namespace, "pytorchjobs", one_cpu(name))
        if name != "c":  # a and b first, so they are the two Kueue admits
            b.wait(lambda n=name: running(b, n), what=f"Kueue to admit {name} and mljob to run it")

    def owners() -> list[str]:
        workloads = b.custom.list_namespaced_custom_object(*KUEUE, b.namespace, "workloads")["items"]
        return sorted(r["name"] for w in workloads for r in w["metadata"]["ownerReferences"] if r.get("controller"))

    # Kueue's own Workloads, one per PyTorchJob (mljob makes none for a Kubeflow kind).
    b.wait(lambda: owners() == ["a", "b", "c"], what="Kueue's Workloads of a, b and c")
    # c waits: suspended by Kueue's rules, no pod, and mljob says why in its Suspended condition.
    b.wait(lambda: true(job(b, "c"), "Suspended"), what="c to be Suspended")
    assert job(b, "c")["spec"]["runPolicy"]["suspend"] is True
    assert b.list("pods", "training.kubeflow.org/job-name=c") == []

    b.exit("a-master-0", 0)  # a finishes: Kueue sees its Succeeded condition, releases its quota, admits c
    b.wait(lambda: true(job(b, "a"), "Succeeded"), what="a to succeed")
    b.wait(lambda: running(b, "c"), what="Kueue to admit c once a finished, and mljob to run it")
    resumed = next(c for c in job(b, "c")["status"]["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "PyTorchJobResumed")
