"""An MLJob dispatched by Kueue's MultiKueue trains for real: submitted to a manager cluster, run on a worker that is
the node agent's local cluster (real processes, their own networks, cluster DNS), its status copied back.

The manager is a plain control plane (kwok) with Kueue and mljob; the worker a LocalCluster with Kueue and mljob.
examples/pytorch-ddp (as controlplane/examples.py patches it for the node agent) is submitted to the manager with
``spec.managedBy: kueue.x-k8s.io/multikueue`` and the queue label; tests/operator/test_e2e_multikueue.py has the set
-up's other cases on kwok. The master's RESULT line, read on the worker, is checked as ``mljob run``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_operator as on_host
import yaml
from agentkit import local_cluster

from controlplane import ControlPlane
from controlplane.cluster import BIN, KUEUE_NAMESPACE
from controlplane.examples import EXAMPLES, patches
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "multikueue"
QUEUE = "research"
DEADLINE = 300.0
RESULT = "RESULT ok"
CHECK_PARAMETERS = {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": "multikueue"}

pytestmark = [
    pytest.mark.frameworks,
    pytest.mark.slow,
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]


def kubectl_apply(cp: ControlPlane, doc: dict[str, Any] | list[dict[str, Any]], folder: Path, name: str) -> None:
    path = folder / f"{name}.yaml"
    docs = doc if isinstance(doc, list) else [doc]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    cp.kubectl("apply", "--server-side", "-f", str(path))


def operator(cp: ControlPlane, log: Path) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*on_host.MLJOB, "operator", "--namespace", NAMESPACE, "--standalone"],
            env=environ, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def queues(namespace: str, check: str | None) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue of 4 CPUs and 4 GiB (with the admission check ``check``), the LocalQueue."""
    api = "kueue.x-k8s.io/v1beta2"
    resources = [{"name": "cpu", "nominalQuota": 4}, {"name": "memory", "nominalQuota": "4Gi"}]
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [
            {"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default", "resources": resources}]}
        ],
    }
    if check is not None:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": check}]}
    return [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": "cluster-research"}, "spec": spec},
        {"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": namespace},
         "spec": {"clusterQueue": "cluster-research"}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, LocalCluster]]:
    """The manager (kwok) and the worker (node agents), each with Kueue, mljob and the CRDs, MultiKueue set up."""
    folder = tmp_path_factory.mktemp("multikueue")
    with local_cluster(folder / "worker", "multikueue", agents=2) as worker:
        manager = ControlPlane(folder / "manager", log=print).start()
        procs = []
        try:
            for cp in (manager, worker.control_plane):
                cp.kubectl("apply", "-k", str(ROOT / "crds"))
                cp.kubectl("apply", "--server-side", "-k", str(ROOT / "crds" / "kubeflow"))
                cp.kubectl("wait", "--for=condition=Established", "crd/mljobs.mljob.io", "--timeout=60s")
                cp.start_kueue()
                cp.kubectl("create", "namespace", NAMESPACE)
                procs.append(operator(cp, folder / f"{cp.workdir.name}-operator.log"))
            kubectl_apply(worker.control_plane, queues(NAMESPACE, None), folder, "worker-queues")
            # As docs/multicluster.md has a person do it: the worker's kubeconfig, flattened, in a Secret.
            kubeconfig = folder / "worker.kubeconfig"
            kubeconfig.write_text(worker.control_plane.kubectl("config", "view", "--minify", "--flatten"))
            manager.kubectl("create", "namespace", KUEUE_NAMESPACE)
            manager.kubectl(
                "create", "secret", "generic", "worker", "-n", KUEUE_NAMESPACE, f"--from-file=kubeconfig={kubeconfig}"
            )
            api = "kueue.x-k8s.io/v1beta2"
            multikueue = [
                {"apiVersion": api, "kind": "MultiKueueCluster", "metadata": {"name": "worker"},
                 "spec": {"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": "worker"}}}},
                {"apiVersion": api, "kind": "MultiKueueConfig", "metadata": {"name": "multikueue"},
                 "spec": {"clusters": ["worker"]}},
                {"apiVersion": api, "kind": "AdmissionCheck", "metadata": {"name": "multikueue"},
                 "spec": {"controllerName": "kueue.x-k8s.io/multikueue", "parameters": CHECK_PARAMETERS}},
            ]  # fmt: skip
            kubectl_apply(manager, [*multikueue, *queues(NAMESPACE, "multikueue")], folder, "manager-multikueue")
            manager.kubectl(
                "wait", "--for=condition=Active", "admissioncheck/multikueue", "--timeout=120s", timeout=150
            )
            yield manager, worker
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            for log in sorted(folder.glob("*-operator.log")):
                print(f"----- {log.name} (tail) -----\n{log.read_text(errors='replace')[-3000:]}")
            manager.stop()


def pytorch_ddp() -> dict[str, Any]:
    """examples/pytorch-ddp/job.yaml with the node agent's patches, the queue label and MultiKueue's managedBy."""
    folder = EXAMPLES / "pytorch-ddp"
    job: dict[str, Any] = json.loads(json.dumps(yaml.safe_load((folder / "job.yaml").read_text())))
    for patch in patches(job, folder.resolve()):
        assert patch["op"] == "add", patch
        *parents, last = patch["path"].split("/")[1:]
        target: Any = job
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), patch["value"])
        else:
            target[last] = patch["value"]
    job["metadata"] = {"name": "ddp", "namespace": NAMESPACE, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}}
    job["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    return job


def phase(cp: ControlPlane, name: str) -> str:
    out = cp.kubectl("get", "mljob", name, "-n", NAMESPACE, "-o", "jsonpath={.status.phase}", "--ignore-not-found")
    return out.strip()


def test_pytorch_ddp_submitted_to_the_manager_trains_on_the_node_agents_worker(clusters, tmp_path: Path) -> None:
    manager, worker = clusters
    started = time.monotonic()
    kubectl_apply(manager, pytorch_ddp(), tmp_path, "ddp")
    until(lambda: phase(worker.control_plane, "ddp") == "Running", DEADLINE, "ddp running on the worker", interval=0.2)
    running = time.monotonic() - started
    # Followed while it runs: once the job is Finished, MultiKueue deletes the worker's copy, and its pods.
    cp = worker.control_plane
    log_path = tmp_path / "ddp-master-0.log"
    with log_path.open("wb") as out:
        follower = subprocess.Popen(
            [str(BIN / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "logs", "-f", "-n", NAMESPACE, "ddp-master-0"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    until(
        lambda: phase(manager, "ddp") in ("Succeeded", "Failed"), DEADLINE, "ddp to finish on the manager", interval=0.2
    )
    finished = time.monotonic() - started
    print(f"MultiKueue on the node agent: submit -> Running on the worker {running:.1f} s, -> Succeeded on the "
          f"manager {finished:.1f} s")  # fmt: skip
    assert phase(manager, "ddp") == "Succeeded"
    assert manager.kubectl("get", "pods", "-n", NAMESPACE, "-o", "name").strip() == ""  # nothing ran here
    follower.wait(60)  # the stream ends with the container
    log = log_path.read_text(errors="replace")
    results = [line for line in log.splitlines() if line.startswith("RESULT")]
    assert len(results) == 1, log
    assert results[0].startswith(RESULT), results[0]
    assert "allreduce=6.0" in results[0], results[0]
