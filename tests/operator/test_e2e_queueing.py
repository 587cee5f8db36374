"""Kueue admits MLJobs on the real control plane: the real Kueue v0.17 (built from its module), its quota, its
eviction. The operator creates each job's Workload and plays Kueue's job-framework part (mljob/core/kueue.py).

Each test gets a ClusterQueue of its own with 2 CPUs of one ResourceFlavor that steers pods to zone-b (the
shared control plane's kwok-node-2), a LocalQueue in its namespace, and jobs of one 1-CPU pod each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import KUEUE, E2EJob, Forever, Kube, Role, queue

QUEUE = "research"


@pytest.fixture
def queued(kueue, world) -> Iterator[Any]:
    """A world whose operator starts after Kueue is installed, with a 2-CPU ClusterQueue behind LocalQueue research."""
    w = world(operator=True)
    with queue(w.kube, QUEUE, node_labels={"topology.kubernetes.io/zone": "zone-b"}):
        yield w


def one_cpu(name: str) -> E2EJob:
    return E2EJob(
        name,
        "pytorch",
        {"Master": Role(1, (Forever(),))},
        requests={"cpu": "1"},
        labels={"kueue.x-k8s.io/queue-name": QUEUE},
    )


def workload(b: Kube, job: str) -> dict[str, Any]:
    return b.custom.get_namespaced_custom_object(*KUEUE, b.namespace, "workloads", job)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == kind), {})


def fill(b: Kube) -> None:
    """Two jobs admitted and running (the queue's 2 CPUs), a third waiting with Kueue's reason, and no pod."""
    for name in ("a", "b"):
        b.submit(one_cpu(name))
        b.wait_phase(name, "Running")
    b.submit(one_cpu("c"))
    status = b.wait(
        lambda: b.status("c") if "insufficient unused quota" in (b.status("c").get("message") or "") else None,
        what="c to wait for quota, saying so",
    )
    assert status["phase"] == "Suspended"
    assert "queued in LocalQueue research" in status["message"], status["message"]
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert suspended["reason"] == "Queued"
    assert b.pods("c") == {}


def test_two_jobs_fit_the_quota_the_third_waits_and_starts_when_one_finishes(queued):
    b = queued.kube
    fill(b)
    # What Kueue's admission set: the flavor's node labels, so the pods land in zone-b.
    pod = b.pods("a")["a-master-0"]
    assert pod["spec"]["nodeSelector"] == {"topology.kubernetes.io/zone": "zone-b"}
    assert b.core.read_node(pod["spec"]["nodeName"]).metadata.labels["topology.kubernetes.io/zone"] == "zone-b"
    wl = workload(b, "a")
    assert [r["uid"] for r in wl["metadata"]["ownerReferences"] if r.get("controller")] == [
        b.job("a")["metadata"]["uid"]
    ]
    assert wl["spec"]["podSets"][0]["name"] == "master"
    assert wl["spec"]["podSets"][0]["count"] == 1
    b.wait(lambda: condition(workload(b, "a"), "PodsReady").get("status") == "True", what="PodsReady on a's Workload")
    assert condition(workload(b, "c"), "QuotaReserved").get("status") == "False"

    b.exit("a-master-0", 0)  # a finishes: its Workload is Finished and its quota is released
    b.wait_phase("a", "Succeeded")
    finished = b.wait(lambda: condition(workload(b, "a"), "Finished") or None, what="Finished on a's Workload")
    assert finished["status"] == "True"
    assert finished["reason"] == "Succeeded"
    b.wait_phase("c", "Running")
    admitted = b.events("c", "Admitted")
    assert admitted
    assert f"ClusterQueue {b.namespace[:63]}" in admitted[0]["message"]


def test_an_evicted_job_gives_its_quota_back_and_the_waiting_job_starts(queued):
    b = queued.kube
    fill(b)
    # Deactivating b's Workload makes Kueue evict it: the operator deletes b's pods, then clears the admission.
    b.custom.patch_namespaced_custom_object(*KUEUE, b.namespace, "workloads", "b", {"spec": {"active": False}})
    status = b.wait(
        lambda: b.status("b") if "evicted by Kueue" in (b.status("b").get("message") or "") else None,
        what="b to say it was evicted",
    )
    assert status["phase"] == "Suspended"
    b.wait(lambda: b.pods("b") == {}, what="b's pods deleted")
    b.wait(lambda: not (workload(b, "b").get("status") or {}).get("admission"), what="b's admission cleared")
    b.wait_phase("c", "Running")
    assert b.phase("b") == "Suspended"  # deactivated: it waits until someone activates it again

    b.delete("mljobs", "c")  # the Workload goes with its job
    b.wait(lambda: "c" not in {w["metadata"]["name"] for w in b.custom.list_namespaced_custom_object(
        *KUEUE, b.namespace, "workloads")["items"]}, what="c's Workload deleted with the job")  # fmt: skip
