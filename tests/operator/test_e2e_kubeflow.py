"""The operator serving Kubeflow's kinds on the real control plane (``--kubeflow``): a PyTorchJob runs to Succeeded
through the one planner with what other tools read written as training-operator writes it; Kubeflow's admission
rules refuse at create (webhook) or fail the job with the field (webhook off); a job managed elsewhere and a kind not
asked for are never touched.
"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from controlplane.cluster import free_port
from tests.operator.harness import Kube

RUNS = "kwok.mljob.io/runs"


def pytorchjob(name: str, masters: int = 1, workers: int = 2, runs: str = "0@1", **run_policy: Any) -> dict[str, Any]:
    template = {
        "metadata": {"annotations": {RUNS: runs}},
        "spec": {"containers": [{"name": "pytorch", "image": "kubeflow/pytorch-dist-mnist:latest"}]},
    }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "None", **run_policy},
            "pytorchReplicaSpecs": {
                "Master": {"replicas": masters, "restartPolicy": "OnFailure", "template": template},
                "Worker": {"replicas": workers, "restartPolicy": "OnFailure", "template": template},
            },
        },
    }


def create(b: Kube, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    return b.custom.create_namespaced_custom_object("kubeflow.org", "v1", b.namespace, plural, body)  # type: ignore[no-any-return]


def get(b: Kube, plural: str, name: str) -> dict[str, Any]:
    found = b.custom_get("kubeflow.org/v1", plural, name)
    assert found is not None, f"{plural} {name} is gone"
    return found


def condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or () if c["type"] == kind), None)


def true(job: dict[str, Any], kind: str) -> bool:
    found = condition(job, kind)
    return found is not None and found["status"] == "True"


def reached(b: Kube, name: str, kind: str) -> dict[str, Any]:
    """The PyTorchJob once its ``kind`` condition is True."""

    def job() -> dict[str, Any] | None:
        found = get(b, "pytorchjobs", name)
        return found if true(found, kind) else None

    return b.wait(job, what=f"{name} {kind}")


def kubeflow_world(world: Any, *args: str) -> Any:
    w = world(operator=False)
    w.operator.extra_args = [*args]
    w.operator.start()
    return w


def kubectl(e2e: Any, namespace: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = e2e.control_plane.bin / "kubectl"
    return subprocess.run(
        [str(binary), f"--kubeconfig={e2e.kubeconfig}", "-n", namespace, *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_pytorchjob_runs_to_succeeded_written_as_training_operator_writes_it(e2e, world, kubeflow_crds):
    ns_flag = ["--kubeflow", "all"]
    port = str(free_port())
    w = world(operator=False)
    b = w.kube
    w.operator.extra_args = [
        *ns_flag, "--webhook", "--webhook-port", port, "--webhook-host", "127.0.0.1",
        "--webhook-secret", f"{b.namespace}/mljob-webhook", "--webhook-config", f"mljob-{b.namespace}"[:63].rstrip("-"),
    ]  # fmt: skip
    w.operator.start()

    # Kubeflow's webhook rules, with the field: refused at create once the webhook answers.
    bad = pytorchjob("bad", managedBy="kueue.x-k8s.io/other-controller")
    refused = b.wait(
        # --dry-run=server: until the webhook answers, failurePolicy Ignore would let the bad job in for good.
        lambda: (
            (
                r := kubectl(e2e, b.namespace, "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bad))
            ).returncode
            != 0
            and r.stderr
        ),
        what="the webhook to refuse a managedBy Kubeflow does not allow",
    )
    assert "spec.runPolicy.managedBy" in refused
    assert "kueue.x-k8s.io/multikueue" in refused  # the allowed values are named
    assert kubectl(e2e, b.namespace, "create", "-f", "-", stdin=yaml.safe_dump(bad)).returncode != 0

    elsewhere = create(b, "pytorchjobs", pytorchjob("remote", managedBy="kueue.x-k8s.io/multikueue"))
    create(b, "pytorchjobs", pytorchjob("mnist"))
    done = reached(b, "mnist", "Succeeded")

    status = done["status"]
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Created", "True", "PyTorchJobCreated"),
        ("Running", "False", "PyTorchJobRunning"),
        ("Succeeded", "True", "PyTorchJobSucceeded"),
    ]
    assert {k: v.get("succeeded") for k, v in status["replicaStatuses"].items()} == {"Master": 1, "Worker": 2}
    assert status["replicaStatuses"]["Worker"]["selector"] == (
        "training.kubeflow.org/job-name=mnist,training.kubeflow.org/operator-name=pytorchjob-controller,"
        "training.kubeflow.org/replica-type=worker"
    )
    assert {"startTime", "completionTime", "lastReconcileTime"} <= status.keys()
    table = kubectl(e2e, b.namespace, "get", "pytorchjobs", "mnist").stdout
    assert table.split("\n")[1].split()[:2] == ["mnist", "Succeeded"]  # kubectl's State column: the newest condition

    uid = done["metadata"]["uid"]
    pods = {p["metadata"]["name"]: p for p in b.list("pods", "training.kubeflow.org/job-name=mnist")}
    assert sorted(pods) == ["mnist-master-0", "mnist-worker-0", "mnist-worker-1"]
    master = pods["mnist-master-0"]["metadata"]
    assert master["labels"]["training.kubeflow.org/job-role"] == "master"
    assert master["labels"]["training.kubeflow.org/operator-name"] == "pytorchjob-controller"
    assert [(r["kind"], r["uid"], r["controller"]) for r in master["ownerReferences"]] == [("PyTorchJob", uid, True)]
    services = {s["metadata"]["name"]: s for s in b.list("services", "training.kubeflow.org/job-name=mnist")}
    assert sorted(services) == sorted(pods)  # one headless service per replica: {job}-{type}-{i} resolves
    assert services["mnist-worker-1"]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value") for e in pods["mnist-worker-1"]["spec"]["containers"][0]["env"]}
    assert (env["MASTER_ADDR"], env["RANK"], env["WORLD_SIZE"]) == ("mnist-master-0", "2", "3")

    # The MultiKueue job was created before mnist and was never touched: no status, no pods.
    assert get(b, "pytorchjobs", "remote").get("status") in (None, {})
    assert elsewhere["metadata"]["name"] == "remote"
    assert b.list("pods", "training.kubeflow.org/job-name=remote") == []


def test_without_the_webhook_a_bad_job_fails_with_the_kubeflow_field_and_other_kinds_are_untouched(
    e2e, world, kubeflow_crds
):
    w = kubeflow_world(world, "--kubeflow", "PyTorchJob")
    b = w.kube
    tfjob = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "not-asked"},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {"replicas": 1, "template": {"spec": {"containers": [{"name": "tensorflow", "image": "x"}]}}}
            }
        },
    }
    create(b, "tfjobs", tfjob)
    create(b, "pytorchjobs", pytorchjob("two-masters", masters=2))
    failed = reached(b, "two-masters", "Failed")
    message = (condition(failed, "Failed") or {})["message"]
    assert "spec.pytorchReplicaSpecs.Master.replicas" in message
    assert b.list("pods", "training.kubeflow.org/job-name=two-masters") == []
    # The TFJob was created first; the operator serves PyTorchJob only and never looked at it.
    assert get(b, "tfjobs", "not-asked").get("status") in (None, {})
    assert b.list("pods", "training.kubeflow.org/job-name=not-asked") == []
