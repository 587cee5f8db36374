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
    from mljob.operator import discover_placement

    async def ask() -> tuple[bool, bool, object]:
        async with Api(Credentials.load(str(e2e.kubeconfig))) as api:
            served = await api.served("scheduling.k8s.io/v1beta1", ("workloads", "podgroups"))
            missing = await api.served("scheduling.k8s.io/v1beta1", ("workloads", "no-such-things"))
            return served, missing, await discover_placement(api, GangScheduler.KUBERNETES)

    served, missing, placement = asyncio.run(ask())
    assert served is True  # the control plane runs with GenericWorkload on every component
    assert missing is False
    assert placement.unavailable == frozenset()  # type: ignore[attr-defined]
