"""Kueue v0.17's own ``kubeflow.org/mpijob`` integration over v2beta1 MPIJobs that mljob runs (``--kubeflow MPIJob``).

The MPIJob is the MPI Operator's published example (``examples/v2beta1/pi/pi.yaml`` of v0.8.0), unchanged but for
its name, the queue label a user adds, and ``runPolicy.suspend: true``, which Kueue's defaulting webhook would set
(its webhooks are not registered on the local control plane; docs/placement-kueue.md). Each job asks for 3 CPUs and
3 GiB (a launcher and two workers, 1 CPU and 1 GiB each) against a quota of as much: Kueue admits the first, the
second waits suspended until the first has succeeded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.kubeflow.test_mpijob import mpi_operator
from tests.operator.harness import KUEUE, Kube

QUEUE = "hpc"
V2BETA1 = ("kubeflow.org", "v2beta1")


@pytest.fixture
def queued(kueue, world) -> Iterator[Any]:
    """A world whose operator (--kubeflow MPIJob) starts after Kueue; 3 CPUs and 3 GiB behind LocalQueue ``hpc``."""
    w = world(operator=False)
    w.operator.extra_args = ["--kubeflow", "MPIJob"]
    w.operator.start()
    with cpu_and_memory_queue(w.kube, QUEUE):
        yield w


@contextlib.contextmanager
def cpu_and_memory_queue(b: Kube, local: str) -> Iterator[None]:
    """A ResourceFlavor and a ClusterQueue of 3 CPUs and 3 GiB (the example asks for both), named after the
    namespace, behind LocalQueue ``local``; the cluster-scoped two are deleted on the way out."""
    name = b.namespace[:63]
    group, version = KUEUE
    api = "/".join(KUEUE)
    b.custom.create_cluster_custom_object(
        group, version, "resourceflavors", {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": name}}
    )
    resources = [{"name": "cpu", "nominalQuota": 3}, {"name": "memory", "nominalQuota": "3Gi"}]
    spec = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": b.namespace}},
        "resourceGroups": [
            {"coveredResources": ["cpu", "memory"], "flavors": [{"name": name, "resources": resources}]}
        ],
    }
    b.custom.create_cluster_custom_object(
        group,
        version,
        "clusterqueues",
        {"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec},
    )
    local_queue = {"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": local}, "spec": {"clusterQueue": name}}
    b.custom.create_namespaced_custom_object(group, version, b.namespace, "localqueues", local_queue)
    try:
        yield
    finally:
        for plural in ("clusterqueues", "resourceflavors"):
            b.custom.delete_cluster_custom_object(group, version, plural, name)


def pi(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((mpi_operator() / "examples" / "v2beta1" / "pi" / "pi.yaml").read_text())
    doc["metadata"] = {"name": name, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}}
    doc["spec"]["runPolicy"]["suspend"] = True
    return doc


def job(b: Kube, name: str) -> dict[str, Any]:
    found = b.custom_get("kubeflow.org/v2beta1", "mpijobs", name)
    assert found is not None, f"MPIJob {name} is gone"
    return found


def true(obj: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or ())


def pods(b: Kube, name: str) -> list[dict[str, Any]]:
    return b.list("pods", f"training.kubeflow.org/job-name={name}")


def running(b: Kube, name: str) -> bool:
    phases = sorted((p["metadata"]["name"], p["status"].get("phase")) for p in pods(b, name))
    expected = [(f"{name}-launcher", "Running"), (f"{name}-worker-0", "Running"), (f"{name}-worker-1", "Running")]
    return true(job(b, name), "Running") and phases == expected


def test_kueue_admits_the_mpi_operators_published_example_against_its_quota(queued):
    b = queued.kube
    b.custom.create_namespaced_custom_object(*V2BETA1, b.namespace, "mpijobs", pi("first"))
    b.wait(lambda: running(b, "first"), what="Kueue to admit first and mljob to run its launcher and two workers")
    b.custom.create_namespaced_custom_object(*V2BETA1, b.namespace, "mpijobs", pi("second"))

    def owners() -> list[str]:
        workloads = b.custom.list_namespaced_custom_object(*KUEUE, b.namespace, "workloads")["items"]
        return sorted(r["name"] for w in workloads for r in w["metadata"]["ownerReferences"] if r.get("controller"))

    b.wait(lambda: owners() == ["first", "second"], what="Kueue's Workloads of both MPIJobs")
    b.wait(lambda: true(job(b, "second"), "Suspended"), what="second to be Suspended: no quota left")
    assert job(b, "second")["spec"]["runPolicy"]["suspend"] is True
    assert pods(b, "second") == []
    workload = next(
        w
        for w in b.custom.list_namespaced_custom_object(*KUEUE, b.namespace, "workloads")["items"]
        if w["metadata"]["ownerReferences"][0]["name"] == "first"
    )
    assert [(p["name"], p["count"]) for p in workload["spec"]["podSets"]] == [("launcher", 1), ("worker", 2)]

    # the MPI Operator's shape of what it made: one Service named after the job, the hostfile, the SSH key
    first = {p["metadata"]["name"]: p for p in pods(b, "first")}
    assert first["first-launcher"]["metadata"]["labels"]["training.kubeflow.org/job-role"] == "launcher"
    assert b.get("services", "first") is not None
    config = b.core.read_namespaced_config_map("first-config", b.namespace)
    assert config.data["hostfile"].splitlines() == [
        f"first-worker-{i}.first.{b.namespace}.svc slots=1" for i in range(2)
    ]

    b.exit("first-launcher", 0)  # mpirun is done: the launcher decides, the workers are stopped
    b.wait(lambda: true(job(b, "first"), "Succeeded"), what="first to succeed")
    b.wait(lambda: running(b, "second"), what="Kueue to admit second once first finished, and mljob to run it")
    resumed = next(c for c in job(b, "second")["status"]["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "MPIJobResumed")
