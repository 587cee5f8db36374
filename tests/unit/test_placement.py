"""Placement, pure: the gang objects and pod edits each backend renders, locality, and a backend not served."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from mljob.api import GangScheduler, MLJob
from mljob.core.reconcile import Placement, desire
from mljob.core.render import render
from mljob.plugins import load_plugins


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

    from mljob.core.reconcile import plan

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


def resourced(scheduling: dict[str, Any] | None = None, workers: int = 3) -> MLJob:
    """The job with requests: the master asks 2 CPUs, each worker 500m and 1Gi (by its limit), plus an init step."""
    body = job(scheduling, workers).model_dump(by_alias=True, exclude_none=True)
    specs = body["spec"]["replicaSpecs"]
    specs["Master"]["template"] = {
        "spec": {"containers": [{"name": "pytorch", "image": "busybox:1.36", "resources": {"requests": {"cpu": "2"}}}]}
    }
    specs["Worker"]["template"] = {
        "spec": {
            "initContainers": [{"name": "fetch", "image": "busybox:1.36", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [
                {"name": "pytorch", "image": "busybox:1.36", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}
            ],
        }
    }
    return MLJob.model_validate(body)


def test_min_resources_default_to_the_requests_of_the_first_min_available_replicas():
    from mljob.core.placement import min_resources

    # Master (2 CPUs) + 2 workers (max(init 3, 500m) CPUs each, 1Gi from the limit): 8 CPUs, 2Gi.
    assert min_resources(resourced({"minAvailable": 3})) == {"cpu": "8", "memory": str(2 * 2**30)}
    assert min_resources(resourced()) == {"cpu": "11", "memory": str(3 * 2**30)}
    # Fractions come out in milli-units; an explicit value wins as given.
    body = resourced().model_dump(by_alias=True, exclude_none=True)
    body["spec"]["replicaSpecs"]["Worker"]["template"]["spec"].pop("initContainers")
    assert min_resources(MLJob.model_validate(body))["cpu"] == "3500m"
    assert min_resources(resourced({"minResources": {"cpu": 4, "nvidia.com/gpu": "2"}})) == {
        "cpu": "4",
        "nvidia.com/gpu": "2",
    }


def test_coscheduling_renders_its_pod_group_and_every_pod_carries_its_label_and_scheduler():
    spec = {"minAvailable": 3, "scheduleTimeoutSeconds": 60}
    objects = children(resourced(spec), GangScheduler.COSCHEDULING)
    group = objects[0]
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["kind"] == "PodGroup"
    assert group["metadata"]["ownerReferences"] == [OWNER]
    assert group["spec"] == {
        "minMember": 3,
        "minResources": {"cpu": "8", "memory": str(2 * 2**30)},
        "scheduleTimeoutSeconds": 60,
    }
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert len(pods) == 4
    for pod in pods:
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "gang"
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
        kubernetes_validate.validate(pod, "1.37", strict=True)


def test_volcano_renders_its_pod_group_with_queue_and_priority_and_pods_name_it():
    spec = {"queue": "research", "priorityClass": "high"}
    objects = children(resourced(spec), GangScheduler.VOLCANO)
    group = objects[0]
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["kind"] == "PodGroup"
    assert group["spec"] == {
        "minMember": 4,
        "minResources": {"cpu": "11", "memory": str(3 * 2**30)},
        "queue": "research",
        "priorityClassName": "high",
    }
    for pod in (o for o in objects if o["kind"] == "Pod"):
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "gang"
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["spec"]["priorityClassName"] == "high"


def test_a_scheduler_name_in_the_template_is_kept():
    body = job().model_dump(by_alias=True, exclude_none=True)
    body["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["schedulerName"] = "my-coscheduler"
    objects = children(MLJob.model_validate(body), GangScheduler.COSCHEDULING)
    names = {o["spec"].get("schedulerName") for o in objects if o["kind"] == "Pod"}
    assert names == {"my-coscheduler", "scheduler-plugins-scheduler"}


def test_a_required_topology_is_also_the_kubernetes_pod_group_constraint():
    objects = children(job({"topology": {"key": "topology.kubernetes.io/zone"}}), GangScheduler.KUBERNETES)
    workload, group = objects[:2]
    constraint = {"topology": [{"key": "topology.kubernetes.io/zone"}]}
    assert group["spec"]["schedulingConstraints"] == constraint
    assert workload["spec"]["podGroupTemplates"][0]["schedulingConstraints"] == constraint
    preferred = children(
        job({"topology": {"key": "topology.kubernetes.io/zone", "mode": "preferred"}}), GangScheduler.KUBERNETES
    )
    assert "schedulingConstraints" not in preferred[1]["spec"]  # a constraint is strict; preferred is affinity only


def _observed(obj: dict[str, Any], uid: str, **extra: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "uid": uid, "resourceVersion": "7"}, **extra}


def test_volcano_pods_wait_until_the_pod_group_leaves_pending():
    from datetime import UTC, datetime

    from mljob.core.reconcile import plan

    j = job({"gangScheduler": "volcano"})
    desired = desire(j, load_plugins(), Placement())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = plan(j, desired, [], None, now)
    assert [o["kind"] for o in first.creates] == ["PodGroup", "Service"]
    assert "waiting for the Volcano PodGroup" in (first.status or {})["message"]
    group = desired.placement[0]
    condition = {"type": "Unschedulable", "status": "True", "message": "queue research is full"}
    pending = _observed(group, "g", status={"phase": "Pending", "conditions": [condition]})
    held = plan(j, desired, [], None, now, {"PodGroup": pending})
    assert held.creates == (desired.service,)
    assert "queue research is full" in (held.status or {})["message"]
    inqueue = _observed(group, "g", status={"phase": "Inqueue"})
    go = plan(j, desired, [], None, now, {"PodGroup": inqueue})
    assert [o["kind"] for o in go.creates] == ["Pod", "Pod", "Pod", "Pod", "Service"]


def test_schedule_timeout_fails_a_job_whose_pods_are_not_all_placed_in_time():
    from datetime import UTC, datetime, timedelta

    from mljob.api import MLJobStatus
    from mljob.core.reconcile import plan

    j = job({"scheduleTimeoutSeconds": 30})
    desired = desire(j, load_plugins(), Placement())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    unschedulable = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}],
    }
    bound = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    pods = [_observed(p, f"p{i}", status=bound if i else unschedulable) for i, p in enumerate(desired.pods)]
    service = _observed(desired.service or {}, "s")
    first = plan(j, desired, [], None, start)
    started = j.model_copy(update={"status": MLJobStatus.model_validate(first.status)})
    early = plan(started, desired, pods, service, start + timedelta(seconds=10))
    assert early.wake_at == start + timedelta(seconds=30)
    assert early.finished is None
    late = plan(started, desired, pods, service, start + timedelta(seconds=30))
    assert late.finished is not None
    assert late.finished.value == "Failed"
    assert "1 of 4 pods were not scheduled within scheduleTimeoutSeconds (30 s)" in (late.status or {})["message"]
    assert "Unschedulable (0/3 nodes)" in (late.status or {})["message"]
    placed = [_observed(p, f"p{i}", status=bound) for i, p in enumerate(desired.pods)]
    assert plan(started, desired, placed, service, start + timedelta(seconds=31)).finished is None


def test_a_finished_job_deletes_its_gang_objects():
    from datetime import UTC, datetime

    from mljob.api import MLJobStatus
    from mljob.core.reconcile import plan

    j = job()
    desired = desire(j, load_plugins(), Placement(GangScheduler.KUBERNETES))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    started = j.model_copy(update={"status": MLJobStatus.model_validate(plan(j, desired, [], None, now).status)})
    done = {"phase": "Succeeded", "containerStatuses": [{"name": "pytorch", "state": {"terminated": {"exitCode": 0}}}]}
    pods = [_observed(p, f"p{i}", status=done) for i, p in enumerate(desired.pods)]
    result = plan(started, desired, pods, _observed(desired.service or {}, "s"), now)
    assert result.finished is not None
    assert result.finished.value == "Succeeded"
    gone = {(d.api_version, d.kind, d.name) for d in result.deletes if d.kind not in ("Pod", "Service")}
    assert gone == {
        ("scheduling.k8s.io/v1beta1", "Workload", "gang"),
        ("scheduling.k8s.io/v1beta1", "PodGroup", "gang"),
    }


def test_without_topology_or_gang_placement_is_left_to_the_scheduler():
    for pod in (o for o in children(job()) if o["kind"] == "Pod"):
        assert set(pod["spec"]) & {"affinity", "nodeSelector", "schedulerName", "schedulingGroup"} == set()
        assert not set(pod["metadata"].get("annotations") or {}) & {"scheduling.k8s.io/group-name"}


def test_a_gangs_pod_group_follows_min_available_when_the_spec_changes():
    """Kubeflow's gang e2e test: created with minAvailable 10, lowered to 2 by a merge patch, then it must start."""
    from datetime import UTC, datetime

    from mljob.api import MLJobStatus
    from mljob.core.reconcile import plan

    now = datetime(2026, 1, 1, tzinfo=UTC)
    j = job({"gangScheduler": "coscheduling", "minAvailable": 2})
    j = j.model_copy(update={"metadata": j.metadata.model_copy(update={"generation": 1})})
    desired = desire(j, load_plugins(), Placement())
    pods = [_observed(p, f"p{i}", status={"phase": "Pending"}) for i, p in enumerate(desired.pods)]
    service = _observed(desired.service or {}, "s")
    first = plan(j, desired, pods, service, now)
    seen = j.model_copy(update={"status": MLJobStatus.model_validate(first.status)})
    assert plan(seen, desired, pods, service, now).updates == ()  # the generation the status saw: nothing to do
    moved = seen.model_copy(update={"metadata": seen.metadata.model_copy(update={"generation": 2})})
    result = plan(moved, desired, pods, service, now)
    assert [(o["kind"], o["spec"]["minMember"]) for o in result.updates] == [("PodGroup", 2)]
    assert result.creates == ()  # its pods are not touched
    assert (result.status or {})["observedGeneration"] == 2  # so the next pass does not update again
