"""Placement on the real kube-scheduler: Kubernetes' own gang scheduling (Workload and PodGroup, 1.37) and locality.

Each gang test gets a pool of kwok nodes of its own (labelled with the test's namespace, 4 CPUs each) and jobs
whose pods ask for 3 CPUs with a nodeSelector on that pool, so a node holds exactly one of them and what fits is
known. Which requests the scheduler made (the pods/binding it created) comes from the API server's audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import E2EJob, Forever, Kube, Role

from controlplane.cluster import Node

POOL = "e2e.mljob.io/pool"
SCHEDULER = "kube-scheduler/"  # its user agent: it authenticates as the admin here


@pytest.fixture
def pool(world) -> Iterator[tuple[Any, Any]]:
    """A world whose operator runs with --gang-scheduler kubernetes, and a way to add 4-CPU nodes to its pool."""
    w = world(operator=False)
    w.operator.extra_args = ["--gang-scheduler", "kubernetes"]
    w.operator.start()
    made: list[str] = []

    def add_node() -> str:
        name = f"{w.kube.namespace[:50]}-n{len(made)}"
        node = Node(name, cpu="4", memory="16Gi", pods="20", labels={POOL: w.kube.namespace[:63]})
        w.kube.core.create_node(node.body())
        made.append(name)
        w.kube.wait(lambda: _ready(w.kube, name), what=f"node {name} Ready")
        return name

    yield w, add_node
    for name in made:
        w.kube.core.delete_node(name)


def _ready(kube: Kube, node: str) -> bool:
    got = kube.core.read_node(node)
    return any(c.type == "Ready" and c.status == "True" for c in got.status.conditions or ())


def gang(name: str, w: Any, workers: int) -> E2EJob:
    return E2EJob(
        name,
        "pytorch",
        {"Worker": Role(workers, (Forever(),), "OnFailure")},
        requests={"cpu": "3"},
        pod_spec={"nodeSelector": {POOL: w.kube.namespace[:63]}},
    )


def bound(kube: Kube, job: str) -> dict[str, str]:
    return {n: p["spec"].get("nodeName") or "" for n, p in kube.pods(job).items()}


def tried(kube: Kube, job: str, count: int) -> bool:
    """The scheduler has looked at every pod of the job and said why it cannot place it."""
    pods = kube.pods(job)
    return len(pods) == count and all(
        any(c["type"] == "PodScheduled" and c["status"] == "False" for c in p["status"].get("conditions") or ())
        for p in pods.values()
    )


def test_a_gang_that_does_not_fit_gets_no_pod_bound_says_why_and_starts_whole_when_room_appears(pool):
    w, add_node = pool
    b = w.kube
    add_node()
    add_node()  # room for two 3-CPU pods: the gang of three does not fit
    b.submit(gang("big", w, 3))
    b.wait(lambda: tried(b, "big", 3), what="the scheduler to consider every pod")
    assert set(bound(b, "big").values()) == {""}  # none holds a node while the others wait

    status = b.wait(
        lambda: b.status("big") if "Unschedulable (" in (b.status("big").get("message") or "") else None,
        what="a status that says why",
    )
    assert status["phase"] == "Pending"
    assert "is waiting: Unschedulable (" in status["message"], status["message"]  # the scheduler's words follow

    # What the scheduler says of the gang, on its pods: "pod group is unschedulable, minCount (3) cannot be
    # satisfied: ..." (the job's message quotes the first waiting pod's, which under load may be another reason).
    def said() -> str:
        return " ".join(
            c.get("message") or ""
            for p in b.pods("big").values()
            for c in p["status"].get("conditions") or ()
            if c["type"] == "PodScheduled"
        )

    b.wait(lambda: "minCount (3) cannot be satisfied" in said(), what="the scheduler's word on the gang")
    assert set(bound(b, "big").values()) == {""}
    workload = b.custom.get_namespaced_custom_object("scheduling.k8s.io", "v1beta1", b.namespace, "workloads", "big")
    group = b.custom.get_namespaced_custom_object("scheduling.k8s.io", "v1beta1", b.namespace, "podgroups", "big")
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 3}}
    assert group["spec"]["workloadRef"] == {"workloadName": "big", "templateName": "gang"}
    uid = b.job("big")["metadata"]["uid"]
    for owned in (workload, group):
        assert [r["uid"] for r in owned["metadata"]["ownerReferences"] if r.get("controller")] == [uid]
    assert {p["spec"]["schedulingGroup"]["podGroupName"] for p in b.pods("big").values()} == {"big"}

    add_node()  # now it fits: all three are bound, and the job runs
    b.wait(lambda: "" not in bound(b, "big").values(), what="the whole gang bound")
    assert len(set(bound(b, "big").values())) == 3
    b.wait_phase("big", "Running")


def test_two_gangs_competing_for_room_never_both_hold_half(pool):
    w, add_node = pool
    b = w.kube
    add_node()
    add_node()  # room for one gang of two
    mark = w.mark()
    b.submit(gang("left", w, 2))
    b.submit(gang("right", w, 2))

    def settled() -> tuple[str, str] | None:
        places = {job: bound(b, job) for job in ("left", "right")}
        full = [job for job, nodes in places.items() if len(nodes) == 2 and "" not in nodes.values()]
        if len(full) != 1:
            return None
        other = "right" if full[0] == "left" else "left"
        return (full[0], other) if tried(b, other, 2) else None

    winner, waiting = b.wait(settled, what="one gang placed whole and the other considered")
    assert set(bound(b, waiting).values()) == {""}
    b.wait_phase(winner, "Running")
    assert b.phase(waiting) == "Pending"
    # Not only now: the scheduler never bound a single pod of the waiting gang.
    bindings = [r for r in w.session.audit.requests(mark, user_agent=SCHEDULER) if r.subresource == "binding"]
    assert sorted(r.name for r in bindings) == sorted(f"{winner}-worker-{i}" for i in range(2)), bindings

    b.delete("mljobs", winner)  # room again: the waiting gang starts, whole
    b.wait(lambda: "" not in bound(b, waiting).values(), what=f"{waiting} bound once {winner} is gone")
    b.wait_phase(waiting, "Running")


@pytest.mark.parametrize(
    ("framework", "roles"),
    [
        ("tensorflow", {"Chief": 1, "PS": 2, "Worker": 3}),
        ("pytorch", {"Master": 1, "Worker": 4}),
    ],
)
def test_required_locality_puts_every_pod_of_the_job_on_one_node(backend: Kube, framework, roles):
    name = f"local-{framework}"
    job = E2EJob(
        name,
        framework,
        {role: Role(n, (Forever(),)) for role, n in roles.items()},
        run_policy={"schedulingPolicy": {"topology": {"key": "kubernetes.io/hostname", "mode": "required"}}},
    )
    backend.submit(job)
    backend.wait_phase(name, "Running")
    nodes = bound(backend, name)
    assert len(nodes) == sum(roles.values())
    assert len(set(nodes.values())) == 1, nodes
    zones = {backend.core.read_node(n).metadata.labels["topology.kubernetes.io/zone"] for n in set(nodes.values())}
    assert len(zones) == 1


def test_the_operator_finds_which_gang_apis_this_server_serves(e2e):
    import asyncio

    from mljob.api import GangScheduler
    from mljob.kube import Api, Credentials
    from mljob.operator.discovery import discover_placement

    async def ask() -> tuple[bool, bool, object]:
        async with Api(Credentials.load(str(e2e.kubeconfig))) as api:
            served = await api.served("scheduling.k8s.io/v1beta1", ("workloads", "podgroups"))
            missing = await api.served("scheduling.k8s.io/v1beta1", ("workloads", "no-such-things"))
            return served, missing, await discover_placement(api, GangScheduler.KUBERNETES)

    served, missing, placement = asyncio.run(ask())
    assert served is True  # the control plane runs with GenericWorkload on every component
    assert missing is False
    assert GangScheduler.KUBERNETES not in placement.unavailable  # type: ignore[attr-defined]


def test_a_missing_priority_class_is_said_in_the_status_and_the_job_starts_once_it_exists(backend: Kube):
    klass = f"{backend.namespace[:40]}-high"
    job = E2EJob(
        "prio", "pytorch", {"Master": Role(1, (Forever(),))}, run_policy={"schedulingPolicy": {"priorityClass": klass}}
    )
    backend.submit(job)
    status = backend.wait(
        lambda: (
            backend.status("prio") if "could not create pod" in (backend.status("prio").get("message") or "") else None
        ),
        what="the refusal in the job's message",
    )
    assert f"no PriorityClass with name {klass} was found" in status["message"], status["message"]
    assert backend.events("prio", "FailedCreate")
    from kubernetes import client

    scheduling = client.SchedulingV1Api(backend.core.api_client)
    scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                      "metadata": {"name": klass}, "value": 1000})  # fmt: skip
    try:
        backend.wait_phase("prio", "Running")
        assert backend.pods("prio")["prio-master-0"]["spec"]["priority"] == 1000
    finally:
        scheduling.delete_priority_class(klass)


@pytest.fixture
def copool(coscheduler, world) -> Iterator[tuple[Any, Any]]:
    """Like ``pool``, with the operator's default gang scheduler the real scheduler-plugins Coscheduling."""
    w = world(operator=False)
    w.operator.extra_args = ["--gang-scheduler", "coscheduling"]
    w.operator.start()
    made: list[str] = []

    def add_node() -> str:
        name = f"{w.kube.namespace[:50]}-n{len(made)}"
        node = Node(name, cpu="4", memory="16Gi", pods="20", labels={POOL: w.kube.namespace[:63]})
        w.kube.core.create_node(node.body())
        made.append(name)
        w.kube.wait(lambda: _ready(w.kube, name), what=f"node {name} Ready")
        return name

    yield w, add_node
    for name in made:
        w.kube.core.delete_node(name)


def test_coscheduling_binds_no_pod_of_a_gang_that_does_not_fit_and_binds_all_when_room_appears(copool):
    w, add_node = copool
    b = w.kube
    add_node()
    add_node()  # room for two 3-CPU pods: the gang of three does not fit
    mark = w.mark()
    b.submit(gang("big", w, 3))
    group = b.wait(
        lambda: b.custom_get("scheduling.x-k8s.io/v1alpha1", "podgroups", "big"), what="the coscheduling PodGroup"
    )
    assert group["spec"] == {"minMember": 3, "minResources": {"cpu": "9"}}
    assert [r["uid"] for r in group["metadata"]["ownerReferences"]] == [b.job("big")["metadata"]["uid"]]
    b.wait(lambda: tried(b, "big", 3), what="scheduler-plugins to consider every pod")
    for pod in b.pods("big").values():
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "big"
    assert set(bound(b, "big").values()) == {""}

    add_node()
    b.wait(lambda: "" not in bound(b, "big").values(), what="the whole gang bound by scheduler-plugins")
    assert len(set(bound(b, "big").values())) == 3
    b.wait_phase("big", "Running")
    bindings = [r for r in w.session.audit.requests(mark) if r.subresource == "binding"]
    assert sorted(r.name for r in bindings) == [f"big-worker-{i}" for i in range(3)]
    assert {r.user_agent.split("/")[0] for r in bindings} == {"scheduler-plugins"}  # not kube-scheduler

    for pod in b.pods("big"):  # the job ends: its PodGroup has nothing left to place and is deleted
        b.exit(pod, 0)
    b.wait_phase("big", "Succeeded")
    b.wait(lambda: b.custom_get("scheduling.x-k8s.io/v1alpha1", "podgroups", "big") is None, what="the PodGroup gone")


def test_volcano_objects_are_accepted_by_the_api_server_and_pods_wait_for_the_pod_group(volcano_crds, world):
    assert "podgroups.scheduling.volcano.sh" in volcano_crds
    w = world(operator=True)
    b = w.kube
    job = E2EJob(
        "vc",
        "tensorflow",
        {"PS": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))},
        requests={"cpu": "1"},
        run_policy={"schedulingPolicy": {"gangScheduler": "volcano", "queue": "research", "minAvailable": 2}},
    )
    b.submit(job)
    group = b.wait(lambda: b.custom_get("scheduling.volcano.sh/v1beta1", "podgroups", "vc"), what="the PodGroup")
    assert group["spec"]["minMember"] == 2
    assert group["spec"]["queue"] == "research"
    assert group["spec"]["minResources"] == {"cpu": "2"}
    status = b.wait(
        lambda: b.status("vc") if "enqueue" in (b.status("vc").get("message") or "") else None,
        what="the job to say it waits for Volcano",
    )
    assert "waiting for Volcano to enqueue the PodGroup" in status["message"]
    assert b.pods("vc") == {}
    # What Volcano's enqueue action does once the queue has room; no Volcano scheduler runs here. (Its CRD has
    # no status subresource: Volcano writes the status with the object.)
    b.custom.patch_namespaced_custom_object(
        "scheduling.volcano.sh", "v1beta1", b.namespace, "podgroups", "vc", {"status": {"phase": "Inqueue"}}
    )
    b.wait(lambda: len(b.pods("vc")) == 3, what="the pods, once the PodGroup is enqueued")
    for pod in b.pods("vc").values():
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "vc"
        assert pod["spec"]["schedulerName"] == "volcano"
    b.delete("mljobs", "vc")
    b.wait(
        lambda: (
            not b.custom.list_namespaced_custom_object("scheduling.volcano.sh", "v1beta1", b.namespace, "podgroups")[
                "items"
            ]
        ),
        what="the PodGroup deleted with its job",
    )


def test_a_job_not_placed_within_its_schedule_timeout_fails_saying_what_the_scheduler_said(backend: Kube):
    job = E2EJob(
        "late",
        "pytorch",
        {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Forever(),))},
        requests={"cpu": "1000"},  # no node has that many
        run_policy={"schedulingPolicy": {"scheduleTimeoutSeconds": 3}},
    )
    backend.submit(job)
    status = backend.wait_phase("late", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ScheduleTimeout"
    assert "2 of 2 pods were not scheduled within scheduleTimeoutSeconds (3 s)" in failed["message"]
    assert "Insufficient cpu" in failed["message"], failed["message"]
    backend.wait(lambda: backend.pods("late") == {}, what="cleanPodPolicy Running to delete the pending pods")
