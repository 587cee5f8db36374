"""Migration without a restart: Kubeflow's training-operator v1.8.1 (built here) runs a PyTorchJob to Running, it is
stopped, mljob starts with ``--kubeflow``: the job's pods and services are adopted (none recreated, no pod created
at all), and the job finishes with the status training-operator wrote continued.

The steps a person takes are in docs/migrating-from-training-operator.md.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controlplane.cluster import free_port
from controlplane.pki import Authority

TO_CERTS = Path("/tmp/k8s-webhook-server/serving-certs")
"""Where training-operator v1.8.1 reads its webhook key pair (fixed in its source); it cannot start without one."""
RUNS = "kwok.mljob.io/runs"


def training_operator(e2e: Any, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    """training-operator v1.8.1 out of cluster, watching only ``namespace`` (no other test's jobs are its business)."""
    cp = e2e.control_plane
    binary = cp.bin / "training-operator"
    if not binary.exists():
        pytest.fail(f"no {binary}: `make controlplane` builds training-operator v1.8.1")
    subprocess.run(
        [str(cp.bin / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "create", "namespace", "kubeflow"],
        capture_output=True, check=False,
    )  # fmt: skip
    for where in ("kubeflow", namespace):  # its cert rotator reads the Secret, through a cache of the watched namespace
        subprocess.run(
            [str(cp.bin / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "-n", where, "create", "secret", "generic",
             "training-operator-webhook-cert"],
            capture_output=True, check=False,
        )  # fmt: skip
    if not (TO_CERTS / "tls.crt").exists():
        pair = Authority(e2e.tmp / "to-pki").issue("to-webhook", "training-operator", server=True)
        TO_CERTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.cert, TO_CERTS / "tls.crt")
        shutil.copyfile(pair.key, TO_CERTS / "tls.key")
    args = [
        str(binary),
        f"--kubeconfig={cp.kubeconfig}",
        "--enable-scheme=pytorchjob",
        f"--namespace={namespace}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}",
        f"--health-probe-bind-address=127.0.0.1:{free_port()}",
        f"--webhook-server-port={free_port()}",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or ()}


def test_a_running_pytorchjob_moves_from_training_operator_to_mljob_without_a_restart(e2e, world, kubeflow_crds):
    w = world(operator=False)
    b = w.kube
    log = w.tmp / "training-operator.log"
    template = {
        "metadata": {"annotations": {RUNS: "forever"}},
        "spec": {"containers": [{"name": "pytorch", "image": "kubeflow/pytorch-dist-mnist:latest"}]},
    }
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "migrate"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
                "Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": template},
            }
        },
    }
    to = training_operator(e2e, b.namespace, log)
    try:
        b.custom.create_namespaced_custom_object("kubeflow.org", "v1", b.namespace, "pytorchjobs", job)

        def running() -> dict[str, Any] | None:
            found = b.custom_get("kubeflow.org/v1", "pytorchjobs", "migrate") or {}
            pods = b.list("pods", "training.kubeflow.org/job-name=migrate")
            up = len(pods) == 3 and all((p.get("status") or {}).get("phase") == "Running" for p in pods)
            held = (conditions(found).get("Running") or {}).get("status") == "True"
            return found if up and held else None

        before = b.wait(running, timeout=120, what="training-operator to run the job (its log: " + str(log) + ")")
    finally:
        to.terminate()
        to.wait(30)
    pods = {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in b.list("pods", "training.kubeflow.org/job-name=migrate")
    }
    services = {
        s["metadata"]["name"]: s["metadata"]["uid"]
        for s in b.list("services", "training.kubeflow.org/job-name=migrate")
    }
    assert sorted(services) == sorted(pods) == ["migrate-master-0", "migrate-worker-0", "migrate-worker-1"]

    mark = w.mark()
    w.operator.extra_args = ["--kubeflow", "PyTorchJob"]
    w.operator.start()
    for name in pods:  # the training ends: each pod's container exits 0
        b.exit(name, 0)

    def succeeded() -> dict[str, Any] | None:
        found = b.custom_get("kubeflow.org/v1", "pytorchjobs", "migrate") or {}
        return found if (conditions(found).get("Succeeded") or {}).get("status") == "True" else None

    after = b.wait(succeeded, what="mljob to finish the adopted job")
    now = {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in b.list("pods", "training.kubeflow.org/job-name=migrate")
    }
    assert now == pods  # the very same pods: adopted, not recreated
    made = {r.key for r in w.requests(mark) if r.verb == "create"}
    assert ("create", "pods") not in made
    assert ("create", "services") not in made
    # The status training-operator wrote goes on: its start time, its Created condition as it wrote it.
    assert after["status"]["startTime"] == before["status"]["startTime"]
    assert conditions(after)["Created"] == conditions(before)["Created"]
    assert conditions(after)["Succeeded"]["reason"] == "PyTorchJobSucceeded"
    assert after["status"]["replicaStatuses"]["Worker"]["succeeded"] == 2
