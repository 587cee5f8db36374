"""Katib's defaults hold for jobs the real operator runs (``--kubeflow all``), judged by Katib v0.19.0's own code.

For every Kubeflow kind mljob serves, a job that succeeds and one that fails, side by side in one namespace: Katib's
default success condition holds exactly for the one that succeeded, its failure condition exactly for the one that
failed, and neither while they run (``GetDeployedJobStatus`` with the tidwall/gjson Katib pins:
tests/kubeflow/katib_conditions.py); Katib's default primary pod labels select exactly one pod per job, the kind's
primary replica, and every pod has the primary container Katib names (the kind's default container) and a
controller ownerReference to its job, which is how Katib's pod webhook finds the trial a pod belongs to.
"""

from __future__ import annotations

from typing import Any

import pytest

from mljob.core.kubeflow.kinds import KINDS
from tests.kubeflow import katib_conditions as katib

LAYOUTS: dict[str, dict[str, int]] = {
    "TFJob": {"Chief": 1, "Worker": 1},
    "PyTorchJob": {"Master": 1, "Worker": 1},
    "MXJob": {"Scheduler": 1, "Server": 1, "Worker": 1},
    "XGBoostJob": {"Master": 1, "Worker": 1},
    "JAXJob": {"Worker": 2},
    "PaddleJob": {"Master": 1, "Worker": 1},
}
PRIMARY_REPLICA = {
    # Each controller's IsMasterRole, which puts job-role=master on the pod.
    "TFJob": "chief-0",
    "PyTorchJob": "master-0",
    "MXJob": "server-0",
    "XGBoostJob": "master-0",
    "JAXJob": "worker-0",
    "PaddleJob": "master-0",
}
ENDS = {"ok": (0, "Completed"), "bad": (1, "Error")}
"""Job name suffix -> how every pod of the job exits."""
TERMINAL = ("Succeeded", "Failed")


@pytest.fixture(scope="module")
def katib_built() -> None:
    try:
        katib.binary()
    except katib.BuildError as error:
        pytest.fail(str(error))


def kubeflow_job(kind: str, name: str) -> dict[str, Any]:
    """Replicas that run until the test ends them (no kwok script), restartPolicy Never: one exit decides."""
    facts = KINDS[kind]
    template = {"spec": {"containers": [{"name": facts.container_name, "image": "kubeflow/trial:latest"}]}}
    specs = {role: {"replicas": n, "restartPolicy": "Never", "template": template} for role, n in LAYOUTS[kind].items()}
    spec: dict[str, Any] = {"runPolicy": {"cleanPodPolicy": "None"}, facts.replica_specs_field: specs}
    if kind == "MXJob":
        spec["jobMode"] = "MXTrain"  # required by MXJob's schema (v1.8.1)
    return {"apiVersion": facts.api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}


def jobs_now(b: Any) -> dict[str, dict[str, Any]]:
    """Every Kubeflow job in the namespace, by name."""
    found = {}
    for facts in KINDS.values():
        listed = b.custom.list_namespaced_custom_object(facts.group, facts.version, b.namespace, facts.plural)
        for item in listed["items"]:
            found[item["metadata"]["name"]] = {"apiVersion": facts.api_version, "kind": facts.kind, **item}
    return found


def true(job: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (job.get("status") or {}).get("conditions") or ())


def test_katibs_default_conditions_primary_pod_and_container_hold_for_every_kind(
    e2e: Any, world: Any, kubeflow_crds: list[str], katib_built: None
) -> None:
    w = world(operator=False)
    w.operator.extra_args = ["--kubeflow", "all"]
    w.operator.start()
    b = w.kube
    names = {f"{kind.lower()}-{end}": kind for kind in KINDS for end in ENDS}
    for name, kind in names.items():
        facts = KINDS[kind]
        b.custom.create_namespaced_custom_object(
            facts.group, facts.version, b.namespace, facts.plural, kubeflow_job(kind, name)
        )

    def all_running() -> dict[str, dict[str, Any]] | None:
        jobs = jobs_now(b)
        return jobs if jobs.keys() == names.keys() and all(true(j, "Running") for j in jobs.values()) else None

    running = b.wait(all_running, timeout=120, what="every job Running")
    verdicts = dict(zip(running, katib.judge(list(running.values())), strict=True))
    for name, v in verdicts.items():
        assert (v["succeeded"], v["failed"], v["trial"]["condition"]) == (False, False, "Running"), name

    # The pods, as Katib's pod webhook and metrics collector find them.
    pods = b.list("pods")
    by_job: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for pod in pods:
        meta = pod["metadata"]
        controllers = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
        assert len(controllers) == 1, (meta["name"], meta.get("ownerReferences"))
        owner = controllers[0]
        job = running[owner["name"]]
        assert (owner["apiVersion"], owner["kind"], owner["uid"]) == (
            "kubeflow.org/v1", job["kind"], job["metadata"]["uid"],
        ), meta["name"]  # fmt: skip
        by_job[owner["name"]].append(pod)
    for name, kind in names.items():
        job_pods = by_job[name]
        assert len(job_pods) == sum(LAYOUTS[kind].values()), name
        container = KINDS[kind].container_name
        for pod in job_pods:
            assert container in [c["name"] for c in pod["spec"]["containers"]], pod["metadata"]["name"]
        labels = verdicts[name]["primaryPodLabels"]
        primary = [p["metadata"]["name"] for p in job_pods if labels.items() <= p["metadata"]["labels"].items()]
        assert primary == [f"{name}-{PRIMARY_REPLICA[kind]}"], (name, primary)

    # Every pod exits: 0 in the "-ok" jobs, 1 in the "-bad" ones.
    for name in names:
        code, reason = ENDS[name.rsplit("-", 1)[1]]
        for pod in by_job[name]:
            b.exit(pod["metadata"]["name"], code, reason)

    def all_ended() -> dict[str, dict[str, Any]] | None:
        jobs = jobs_now(b)
        return jobs if all(any(true(j, t) for t in TERMINAL) for j in jobs.values()) else None

    ended = b.wait(all_ended, timeout=120, what="every job Succeeded or Failed")
    for name, v in zip(ended, katib.judge(list(ended.values())), strict=True):
        kind = names[name]
        outcome = "Succeeded" if name.endswith("-ok") else "Failed"
        assert (v["succeeded"], v["failed"]) == (outcome == "Succeeded", outcome == "Failed"), (name, v)
        assert (v["trial"]["condition"], v["trial"]["reason"]) == (outcome, f"{kind}{outcome}"), (name, v)
