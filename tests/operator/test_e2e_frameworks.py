"""Per framework: Created -> Running -> Succeeded with exactly the rendered pods and one service."""

from __future__ import annotations

from typing import Any

import pytest
from harness import Backend, E2EJob, Forever, Role, Run, conditions

from mljob.api import MLJob
from mljob.core.render import render
from mljob.plugins import load_plugins

LONG = Run(0, after=1.5)  # long enough to see the job Running with every child in place

CASES = {
    "pytorch": E2EJob("e2e-pytorch", "pytorch", {"Master": Role(1, (LONG,)), "Worker": Role(2, (LONG,))}),
    "tensorflow": E2EJob(
        "e2e-tf", "tensorflow", {"Chief": Role(1, (LONG,)), "Worker": Role(2, (LONG,)), "PS": Role(1, (Forever(),))}
    ),
    "mxnet": E2EJob(
        "e2e-mxnet",
        "mxnet",
        {"Scheduler": Role(1, (Forever(),)), "Server": Role(1, (Forever(),)), "Worker": Role(2, (LONG,))},
    ),
}
STOPPED = {"pytorch": [], "tensorflow": ["e2e-tf-ps-0"], "mxnet": ["e2e-mxnet-scheduler-0", "e2e-mxnet-server-0"]}


MISSING = object()


def mismatches(got: Any, want: Any, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want``, ignoring keys only ``got`` has (what the server and kubelet add)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not a mapping"]
        return [m for k, v in want.items() for m in mismatches(got.get(k, MISSING), v, f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} != {want!r}"]
        return [m for i, (g, w) in enumerate(zip(got, want, strict=True)) for m in mismatches(g, w, f"{path}[{i}]")]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


@pytest.mark.parametrize("framework", CASES)
def test_a_job_runs_to_success_with_exactly_the_rendered_children(backend: Backend, framework: str):
    spec = CASES[framework]
    name = spec.name
    backend.submit(spec)
    backend.wait_phase(name, "Running")

    job = backend.job(name)
    plugins = load_plugins()
    fw = plugins.framework(framework)
    assert fw is not None
    want = render(MLJob.model_validate(job), fw, plugins, uid=job["metadata"]["uid"])
    pods = backend.pods(name)
    assert sorted(pods) == sorted(o["metadata"]["name"] for o in want if o["kind"] == "Pod")
    for obj in want:
        if obj["kind"] != "Pod":
            continue
        got = pods[obj["metadata"]["name"]]
        # Every label we render; the API server adds the node's topology labels when it binds the pod
        # (PodTopologyLabelsAdmission), which is its business, not ours.
        added = {k: v for k, v in got["metadata"]["labels"].items() if k not in obj["metadata"]["labels"]}
        assert {k: got["metadata"]["labels"].get(k) for k in obj["metadata"]["labels"]} == obj["metadata"]["labels"]
        assert set(added) <= {"topology.kubernetes.io/zone", "topology.kubernetes.io/region"}, added
        assert got["metadata"]["ownerReferences"] == obj["metadata"]["ownerReferences"]
        assert got["spec"]["containers"][0]["env"] == obj["spec"]["containers"][0]["env"]
        assert got["spec"]["hostname"] == obj["spec"]["hostname"]
        assert got["spec"]["subdomain"] == name
        assert not mismatches(got, obj), mismatches(got, obj)  # everything render prints, as printed
    services = [s for s in backend.list("services") if s["metadata"]["name"] == name]
    assert len(services) == 1
    assert services[0]["spec"]["clusterIP"] == "None"
    (rendered_service,) = [o for o in want if o["kind"] == "Service"]
    assert not mismatches(services[0], rendered_service), mismatches(services[0], rendered_service)

    status = backend.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert conditions(status)["Created"] == ("True", "Created")
    assert conditions(status)["Running"][0] == "False"
    assert conditions(status)["Succeeded"] == ("True", "Succeeded")
    assert status["restartCount"] == 0
    assert status["observedGeneration"] == backend.job(name)["metadata"]["generation"]
    assert status["completionTime"] >= status["startTime"]
    # Roles that run until stopped are stopped; the finished workers stay (cleanPodPolicy Running).
    backend.wait(lambda: not set(STOPPED[framework]) & set(backend.pod_names(name)), what="stopped roles gone")
    assert not backend.events(name, "Running")  # the Running condition says it: no request for an event
    gone = [f"pod {pod}" for pod in STOPPED[framework]] + [f"service {name}"]
    (ended,) = backend.messages(name, "Succeeded", *gone)  # the end and its cleanup, in one event
    assert ended.startswith("the job succeeded; deleted "), ended
    created = " ".join(e["message"] for e in backend.events(name, "Created"))  # one event per pass, not per pod
    assert all(f"pod {p}" in created for p in pods)
    assert f"service {name}" in created
