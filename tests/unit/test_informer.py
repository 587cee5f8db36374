"""mljob.operator.informer: the index of what each job owns, fed by watch events and relists, the namespaces watched."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from mljob.operator.informer import ChildIndex, Informer, namespace_matcher
from mljob.operator.kopfcompat import kopf_pause, track_kopf_pause


def child(name: str, job: str | None, rv: int = 1, ns: str = "ns", phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": str(rv)}
    if job is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "name": job, "uid": f"uid-{job}", "controller": True}
        ]
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "big"}]}, "status": {"phase": phase}}


def names(index: ChildIndex, key: tuple[str, str]) -> list[str]:
    return sorted(obj["metadata"]["name"] for obj in index.get(key))


def test_events_index_owned_children_by_job_slimmed():
    index = ChildIndex()
    assert index.apply("ADDED", child("a-0", "a")) == [("ns", "a")]
    assert index.apply("ADDED", child("a-1", "a")) == [("ns", "a")]
    assert index.apply("ADDED", child("b-0", "b", ns="other")) == [("other", "b")]
    assert index.apply("ADDED", child("stray", None)) == []  # no controller MLJob: not kept, no job woken
    assert names(index, ("ns", "a")) == ["a-0", "a-1"]
    assert names(index, ("other", "b")) == ["b-0"]
    assert index.get(("ns", "b")) == []
    assert len(index) == 3
    assert all("spec" not in obj for obj in index.get(("ns", "a")))  # what the planner reads, not the spec


def test_modified_replaces_and_deleted_removes_waking_the_job():
    index = ChildIndex()
    index.apply("ADDED", child("a-0", "a"))
    assert index.apply("MODIFIED", child("a-0", "a", rv=2, phase="Succeeded")) == [("ns", "a")]
    assert index.get(("ns", "a"))[0]["status"]["phase"] == "Succeeded"
    assert index.apply("DELETED", child("a-0", "a", rv=3)) == [("ns", "a")]
    assert index.get(("ns", "a")) == []
    assert len(index) == 0
    # A deletion of a child never indexed (created and deleted between two looks) still wakes its job.
    assert index.apply("DELETED", child("a-9", "a")) == [("ns", "a")]


def test_a_child_whose_owner_changes_moves_and_wakes_both_jobs():
    index = ChildIndex()
    index.apply("ADDED", child("x", "a"))
    assert index.apply("MODIFIED", child("x", "b", rv=2)) == [("ns", "a"), ("ns", "b")]
    assert names(index, ("ns", "b")) == ["x"]
    assert index.get(("ns", "a")) == []
    assert index.apply("MODIFIED", child("x", None, rv=3)) == [("ns", "b")]  # orphaned: no longer the job's
    assert len(index) == 0


def test_a_relist_replaces_one_namespace_and_names_the_jobs_that_changed():
    index = ChildIndex()
    for obj in (child("a-0", "a"), child("a-1", "a"), child("b-0", "b"), child("c-0", "c", ns="other")):
        index.apply("ADDED", obj)
    relisted = [child("a-0", "a"), child("b-0", "b", rv=5, phase="Failed"), child("d-0", "d")]
    # a-1 went (a changed), b-0 moved on (b changed), d-0 is new (d changed); other/ is not this list's.
    assert index.replace(relisted, "ns") == [("ns", "a"), ("ns", "b"), ("ns", "d")]
    assert names(index, ("ns", "a")) == ["a-0"]
    assert index.get(("ns", "b"))[0]["status"]["phase"] == "Failed"
    assert names(index, ("other", "c")) == ["c-0"]
    assert index.replace(relisted, "ns") == []  # the same list again changes nothing
    assert index.replace([], None) == [("ns", "a"), ("ns", "b"), ("ns", "d"), ("other", "c")]
    assert len(index) == 0


def test_namespace_patterns_are_kopfs():
    matches = namespace_matcher(["team-*", "ml,!team-secret"])
    assert [ns for ns in ("team-a", "ml", "team-secret", "default", "mlx") if matches(ns)] == ["team-a", "ml"]
    assert namespace_matcher([])("anything")


def test_informers_watch_each_named_namespace_or_one_cluster_wide_watch_for_patterns():
    def paths(namespaces: list[str] | None) -> list[str]:
        informer = Informer(None, "Pod", "v1", "pods", namespaces, lambda *_: None)  # type: ignore[arg-type]
        return [path for path, _ in informer._paths]

    assert paths(["a", "b", "a"]) == ["/api/v1/namespaces/a/pods", "/api/v1/namespaces/b/pods"]
    assert paths(None) == ["/api/v1/pods"]
    assert paths(["e2e-s-*"]) == ["/api/v1/pods"]
    group = Informer(None, "Workload", "kueue.x-k8s.io/v1beta2", "workloads", ["q"], lambda *_: None)  # type: ignore[arg-type]
    assert [path for path, _ in group._paths] == ["/apis/kueue.x-k8s.io/v1beta2/namespaces/q/workloads"]


def test_kopfs_pause_is_the_toggle_set_it_builds_over_any():
    """What track_kopf_pause relies on in the pinned kopf: one ToggleSet(any) per operator, its pause."""
    from kopf._cogs.aiokits import aiotoggles
    from kopf._core.reactor import running

    source = inspect.getsource(running.spawn_tasks)
    assert source.count("ToggleSet(any)") == 1
    assert "operator_paused = aiotoggles.ToggleSet(any)" in source
    assert track_kopf_pause()

    async def main() -> None:
        assert kopf_pause() is None
        aiotoggles.ToggleSet(all)  # kopf's index readiness: not a pause
        paused = aiotoggles.ToggleSet(any)
        assert kopf_pause() is paused
        toggle = await paused.make_toggle(True, name="peer@ns")
        assert kopf_pause().is_on()  # type: ignore[union-attr]
        waiter = asyncio.create_task(paused.wait_for(False))
        await asyncio.sleep(0)
        assert not waiter.done()
        await toggle.turn_to(False)
        await asyncio.wait_for(waiter, 5)

    asyncio.run(main())
    asyncio.run(_no_pause_in_another_loop())


async def _no_pause_in_another_loop() -> None:
    assert kopf_pause() is None  # a set built in another event loop is another operator's


@pytest.mark.parametrize("pattern", ["a*", "a?", "[ab]", "a,b", "!a"])
def test_patterns_get_one_cluster_wide_watch(pattern: str):
    informer = Informer(None, "Service", "v1", "services", [pattern], lambda *_: None)  # type: ignore[arg-type]
    assert [path for path, _ in informer._paths] == ["/api/v1/services"]


def _pods_in_every_state() -> list[dict[str, Any]]:
    """Whole pods as the API server sends them: what the planner reads, and much it does not."""
    meta = {
        "name": "j-worker-0",
        "namespace": "ns",
        "uid": "u1",
        "resourceVersion": "7",
        "labels": {"mljob.io/replica-type": "worker", "mljob.io/replica-index": "0", "mljob.io/spec-hash": "h"},
        "ownerReferences": [
            {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "name": "j", "uid": "uj", "controller": True}
        ],
        "annotations": {"a": "b"},
        "managedFields": [{"manager": "kubelet"}],
    }
    common = {"hostIP": "10.0.0.1", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}], "qosClass": "BestEffort",
              "startTime": "2026-12-04T00:00:00Z"}  # fmt: skip
    terminated = {"exitCode": 137, "reason": "OOMKilled", "message": "out of memory", "finishedAt": "t"}

    def container(**state: Any) -> dict[str, Any]:
        return {"name": "pytorch", "image": "busybox:1.36", "imageID": "sha256:x", "containerID": "c://1",
                "ready": False, "started": False, "restartCount": 2, **state}  # fmt: skip

    conditions = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes",
            "lastProbeTime": None,
            "lastTransitionTime": "t",
        },
    ]
    return [
        {
            "metadata": meta,
            "spec": {"nodeName": "n"},
            "status": {"phase": "Pending", "conditions": conditions, **common},
        },
        {
            "metadata": meta,
            "status": {
                "phase": "Pending",
                **common,
                "containerStatuses": [container(state={"waiting": {"reason": "ImagePullBackOff", "message": "no"}})],
            },
        },
        {
            "metadata": meta,
            "status": {
                "phase": "Running",
                **common,
                "containerStatuses": [
                    container(state={"running": {"startedAt": "t"}}, lastState={"terminated": terminated})
                ],
            },
        },
        {
            "metadata": meta,
            "status": {
                "phase": "Failed",
                **common,
                "initContainerStatuses": [container(name="init", state={"terminated": {**terminated, "exitCode": 0}})],
                "containerStatuses": [container(state={"terminated": terminated})],
            },
        },
        {"metadata": {**meta, "deletionTimestamp": "t"}, "status": {"phase": "Unknown", "reason": "NodeLost"}},
    ]


def test_a_slim_pod_answers_every_question_the_planner_asks_as_the_whole_pod_does():
    from mljob.core import children as podlib

    questions = [
        podlib.controller_uid, podlib.controller_name, podlib.name, podlib.uid, podlib.fingerprint,
        podlib.terminating, podlib.phase, podlib.scheduled, podlib.finished, podlib.replica_of, podlib.restarts,
        podlib.running, podlib.lost, podlib.waiting_reason,
        lambda pod: podlib.stop_of(pod, "pytorch"), lambda pod: podlib.last_stop_of(pod, "pytorch"),
        lambda pod: podlib.stop_of(pod, "init"),
    ]  # fmt: skip
    for whole in _pods_in_every_state():
        lean = podlib.slim_pod(whole)
        assert [q(lean) for q in questions] == [q(whole) for q in questions], whole["status"]
        kept = repr(lean)
        for dropped in ("busybox", "10.1.0.5", "sha256", "managedFields", "BestEffort", "lastProbeTime", "nodeName"):
            assert dropped not in kept
        assert set(lean) == {"metadata", "status"}
    informer = Informer(None, "Pod", "v1", "pods", ["ns"], lambda *_: None)  # type: ignore[arg-type]
    running = _pods_in_every_state()[2]
    assert podlib.slim_pod(running) != podlib.slim(running)
    assert informer.index.slim(running) == podlib.slim_pod(running)  # what the pod watch keeps
    service = Informer(None, "Service", "v1", "services", ["ns"], lambda *_: None)  # type: ignore[arg-type]
    assert service.index.slim(running) == podlib.slim(running)  # any other kind's status is kept whole
