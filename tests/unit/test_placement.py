"""Placement, pure: the gang objects and pod edits each backend renders, locality, and a backend not served."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from mljob.api import GangScheduler, MLJob
from mljob.plugins import load_plugins
from mljob.reconcile import Placement, desire
from mljob.render import render


def job(scheduling: dict[str, Any] | None = None, workers: int = 3) -> MLJob:
    container = {"name": "pytorch", "image": "busybox:1.36"}
    template = {"spec": {"containers": [container]}}
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": "gang", "namespace": "team", "uid": "u-1"},
            "spec": {
                "framework": "pytorch",
                "replicaSpecs": {
                    "Master": {"replicas": 1, "template": template},
                    "Worker": {"replicas": workers, "template": template},
                },
                "runPolicy": {"schedulingPolicy": scheduling} if scheduling else {},
            },
        }
    )


def children(j: MLJob, gang: GangScheduler = GangScheduler.NONE) -> list[dict[str, Any]]:
    plugins = load_plugins()
    framework = plugins.framework("pytorch")
    assert framework is not None
    return render(j, framework, plugins, uid="u-1", gang=gang)


OWNER = {
    "apiVersion": "mljob.io/v1alpha1",
    "kind": "MLJob",
    "name": "gang",
    "uid": "u-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def test_kubernetes_gang_renders_a_workload_and_a_pod_group_first_and_every_pod_joins_it():
    objects = children(job(), GangScheduler.KUBERNETES)
    assert [o["kind"] for o in objects] == ["Workload", "PodGroup", "Pod", "Pod", "Pod", "Pod", "Service"]
    workload, group = objects[:2]
    meta = {"name": "gang", "namespace": "team", "labels": {"mljob.io/job-name": "gang"}, "ownerReferences": [OWNER]}
    assert workload == {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": meta,
        "spec": {
            "controllerRef": {"apiGroup": "mljob.io", "kind": "MLJob", "name": "gang"},
            "podGroupTemplates": [{"name": "gang", "schedulingPolicy": {"gang": {"minCount": 4}}}],
        },
    }
    assert group == {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "PodGroup",
        "metadata": meta,
        "spec": {
            "workloadRef": {"workloadName": "gang", "templateName": "gang"},
            "schedulingPolicy": {"gang": {"minCount": 4}},
        },
    }
    assert all(o["spec"]["schedulingGroup"] == {"podGroupName": "gang"} for o in objects if o["kind"] == "Pod")


def test_min_available_and_priority_class_reach_the_gang():
    objects = children(job({"minAvailable": 2, "priorityClass": "training"}), GangScheduler.KUBERNETES)
    group = objects[1]
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 2}}
    assert group["spec"]["priorityClassName"] == "training"
    assert objects[0]["spec"]["podGroupTemplates"][0]["priorityClassName"] == "training"


def test_a_job_choice_beats_the_operator_default_both_ways():
    assert [o["kind"] for o in children(job({"gangScheduler": "kubernetes"}))][:2] == ["Workload", "PodGroup"]
    plain = children(job({"gangScheduler": "none"}), GangScheduler.KUBERNETES)
    assert [o["kind"] for o in plain] == ["Pod"] * 4 + ["Service"]
    assert not any("schedulingGroup" in o["spec"] for o in plain if o["kind"] == "Pod")


@pytest.mark.parametrize("mode", ["required", "preferred"])
def test_topology_keeps_the_job_together_through_pod_affinity_to_its_own_pods(mode):
    objects = children(job({"topology": {"key": "topology.kubernetes.io/zone", "mode": mode}}))
    term = {
        "labelSelector": {"matchLabels": {"mljob.io/job-name": "gang"}},
        "topologyKey": "topology.kubernetes.io/zone",
    }
    for pod in (o for o in objects if o["kind"] == "Pod"):
        affinity = pod["spec"]["affinity"]["podAffinity"]
        if mode == "required":
            assert affinity == {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        else:
            assert affinity == {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
            }


def test_every_rendered_placement_object_is_valid_for_kubernetes_1_37():
    objects = children(
        job({"minAvailable": 2, "topology": {"key": "kubernetes.io/hostname"}}), GangScheduler.KUBERNETES
    )
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_a_backend_the_cluster_does_not_serve_fails_the_job_with_the_field_path_and_the_gate_to_enable():
    plugins = load_plugins()
    placement = Placement(GangScheduler.KUBERNETES, frozenset({GangScheduler.KUBERNETES}))
    desired = desire(job(), plugins, placement)
    assert not desired.ok
    (problem,) = desired.problems
    assert problem.path == "spec.runPolicy.schedulingPolicy.gangScheduler"
    assert "GenericWorkload" in problem.message
    assert problem.message.endswith("(the operator's --gang-scheduler)")
    # A job that opts out is not held back by the operator's default.
    assert desire(job({"gangScheduler": "none"}), plugins, placement).ok
    # And with the backend served, the gang objects are part of what the job should consist of.
    served = desire(job(), plugins, Placement(GangScheduler.KUBERNETES))
    assert [o["kind"] for o in served.placement] == ["Workload", "PodGroup"]
    assert len(served.pods) == 4


def test_the_gang_objects_are_created_before_the_pods_and_only_while_pods_are_missing():
    from datetime import UTC, datetime

    from mljob.reconcile import plan

    j = job()
    desired = desire(j, load_plugins(), Placement(GangScheduler.KUBERNETES))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = plan(j, desired, [], None, now)
    assert [o["kind"] for o in first.creates] == ["Workload", "PodGroup", "Pod", "Pod", "Pod", "Pod", "Service"]
    present = [{**p, "metadata": {**p["metadata"], "uid": f"p{i}"}, "status": {"phase": "Pending"}}
               for i, p in enumerate(desired.pods)]  # fmt: skip
    service = {**(desired.service or {}), "metadata": {**(desired.service or {})["metadata"], "uid": "s"}}
    again = plan(j, desired, present, service, now)
    assert again.creates == ()
