"""deploy/ for real: ``kubectl apply -k deploy/`` on the local cluster runs the operator's Deployment as pods on node
agents, and nowhere else.

Its two replicas authenticate with the ServiceAccount token admission mounts and reach the API server at
``kubernetes.default.svc`` (kube-proxy); the API server calls their admission webhook through its Service (its egress
proxy into the pods' network); their health probes pass, their metrics are served; a job trains to Succeeded;
deleting the acting replica's pod hands over to the other (kopf peering) without a duplicate pod; ``kubectl apply -k
deploy/ui`` serves the UI, reached with ``kubectl port-forward``. One LocalCluster with two agents for the module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from agentkit import local_cluster

from controlplane.cluster import BIN, ControlPlane, StartError
from controlplane.examples import EXAMPLES, write_overlay
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import CLUSTER_CIDR, missing_privileges

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "mljob-system"
DEADLINE = 300.0

pytestmark = [
    pytest.mark.frameworks,
    pytest.mark.slow,
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "kube-proxy").exists(), reason="no kube-proxy binary: run `make controlplane`"),
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("deploy"), "deploy", agents=2) as cluster:
        cp = cluster.control_plane
        cp.kubectl("apply", "--server-side", "-k", str(ROOT / "deploy"))
        started = time.monotonic()
        cp.kubectl("-n", SYSTEM, "rollout", "status", "deploy/mljob-operator", f"--timeout={DEADLINE:.0f}s",
                   timeout=DEADLINE + 10)  # fmt: skip
        print(f"deploy/: both operator replicas Ready {time.monotonic() - started:.1f} s after the apply")
        yield cluster


def operator_pods(cp: ControlPlane) -> list[dict]:
    found = json.loads(cp.kubectl("-n", SYSTEM, "get", "pods", "-l", "app.kubernetes.io/name=mljob-operator",
                                  "-o", "json"))  # fmt: skip
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def acting(cp: ControlPlane) -> str:
    """The replica kopf peering lets act: the highest priority (the oldest, by mljob's seniority)."""
    peers = json.loads(cp.kubectl("get", "clusterkopfpeerings", "mljob", "-o", "json")).get("status") or {}
    alive = {p["metadata"]["name"] for p in operator_pods(cp)}
    # a peer's id is <user>@<hostname>/<started>/<suffix>; a pod's hostname is its name
    ranked = sorted(peers.items(), key=lambda item: item[1]["priority"], reverse=True)
    return next(h for key, _ in ranked if (h := key.split("@", 1)[1].split("/", 1)[0]) in alive)


def succeeded(cp: ControlPlane, job: str, namespace: str = "default") -> None:
    cp.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", f"mljob/{job}", f"--timeout={DEADLINE:.0f}s",
               timeout=DEADLINE + 10)  # fmt: skip


def apply_example(local: LocalCluster, name: str, tmp: Path) -> None:
    local.control_plane.kubectl("apply", "-k", str(write_overlay(EXAMPLES / name, tmp / name)))


def job_pods(cp: ControlPlane, job: str) -> list[dict]:
    found = json.loads(cp.kubectl("get", "pods", "-l", f"mljob.io/job-name={job}", "-o", "json"))
    return list(found["items"])


@contextlib.contextmanager
def port_forward(cp: ControlPlane, target: str, port: int) -> Iterator[int]:
    """``kubectl port-forward`` to ``target``'s ``port`` on a free local port; that port."""
    proc = subprocess.Popen(
        [str(BIN / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "-n", SYSTEM, "port-forward", target, f":{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward said: {line}"
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.status, answer.read().decode()


def test_the_operator_runs_only_as_pods_and_trains_a_job(local: LocalCluster, tmp_path: Path):
    cp = local.control_plane
    pods = operator_pods(cp)
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in local.agent_names
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(CLUSTER_CIDR)
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])
    # no `mljob operator` on the host: every such process is in a PID namespace other than this one's (a pod's)
    ours = os.readlink("/proc/self/ns/pid")
    operators = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_operator(p)]
    assert operators
    assert all(os.readlink(p / "ns" / "pid") != ours for p in operators)
    apply_example(local, "pytorch-ddp", tmp_path)
    succeeded(cp, "pytorch-ddp")
    log = cp.kubectl("-n", SYSTEM, "logs", acting(cp))
    assert "default/pytorch-ddp: Running -> Succeeded" in log


def _is_operator(proc: Path) -> bool:
    with contextlib.suppress(OSError):
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        return any(a.endswith(b"mljob") for a in argv[:2]) and b"operator" in argv[1:3]
    return False


def test_an_mpi_job_gets_its_config_map_and_secret_from_the_operators_role(local: LocalCluster, tmp_path: Path):
    """The MPI plugin's per-job objects, created by the operator as deploy/'s ServiceAccount (it may create Secrets,
    never read one); the launcher's mpirun reaches the workers over ssh with them."""
    cp = local.control_plane
    apply_example(local, "mpi-allreduce", tmp_path)
    succeeded(cp, "mpi-allreduce")
    made = cp.kubectl("get", "configmap/mpi-allreduce-config", "secret/mpi-allreduce-ssh", "-o", "name").split()
    assert made == ["configmap/mpi-allreduce-config", "secret/mpi-allreduce-ssh"]
    log = cp.kubectl("logs", "mpi-allreduce-launcher-0")
    assert "RESULT ok" in log
    assert "rank 2 of 3 on mpi-allreduce-worker-2" in log


def test_the_api_server_calls_the_webhook_through_its_service(local: LocalCluster, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: mljob.io/v1alpha1\nkind: MLJob\nmetadata: {name: bad}\nspec:\n  framework: pytorch\n"
        "  replicaSpecs:\n    Chief:\n      replicas: 1\n"
        "      template: {spec: {containers: [{name: c, image: x, command: ['true']}]}}\n"
    )
    with pytest.raises(StartError) as refused:
        local.control_plane.kubectl("apply", "-f", str(bad))
    message = str(refused.value)
    assert 'admission webhook "review.mljob.io" denied the request' in message
    assert "spec.replicaSpecs.Chief: unknown role 'Chief' for framework 'pytorch'" in message


def test_metrics_and_health_are_served(local: LocalCluster):
    cp = local.control_plane
    who = acting(cp)
    with port_forward(cp, f"pod/{who}", 9090) as port:
        status, text = until(lambda: _try(port, "/metrics"), 60, "the metrics through port-forward")
    assert status == 200
    assert "mljob_" in text
    with port_forward(cp, f"pod/{who}", 8080) as port:
        status, _ = until(lambda: _try(port, "/healthz"), 60, "the health endpoint through port-forward")
    assert status == 200


def _try(port: int, path: str) -> tuple[int, str] | None:
    try:
        return get(port, path)
    except OSError:
        return None


def test_deleting_the_acting_replica_hands_over_without_a_duplicate_pod(local: LocalCluster, tmp_path: Path):
    cp = local.control_plane
    before = acting(cp)
    standby = next(p["metadata"]["name"] for p in operator_pods(cp) if p["metadata"]["name"] != before)
    deleted = time.monotonic()
    cp.kubectl("-n", SYSTEM, "delete", "pod", before, "--wait=false")
    apply_example(local, "pytorch-torchrun", tmp_path)
    until(lambda: job_pods(cp, "pytorch-torchrun"), DEADLINE, "the job's pods, from the other replica")
    handover = time.monotonic() - deleted
    first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in job_pods(cp, "pytorch-torchrun")}
    succeeded(cp, "pytorch-torchrun")
    last = {p["metadata"]["name"]: p["metadata"]["uid"] for p in job_pods(cp, "pytorch-torchrun")}
    print(f"handover: the job's first pod {handover:.2f} s after the acting replica's pod was deleted")
    assert sorted(last) == ["pytorch-torchrun-worker-0", "pytorch-torchrun-worker-1"]
    assert {k: v for k, v in last.items() if k in first} == first  # none made twice
    log = cp.kubectl("-n", SYSTEM, "logs", standby)
    assert log.count("default/pytorch-torchrun: created pod pytorch-torchrun-worker-0") == 1
    until(lambda: acting(cp) == standby, 60, "the peering to name the standby as acting")


def test_the_ui_is_served_as_a_pod_and_reached_with_port_forward(local: LocalCluster, tmp_path: Path):
    cp = local.control_plane
    job = tmp_path / "held.yaml"
    job.write_text(
        "apiVersion: mljob.io/v1alpha1\nkind: MLJob\nmetadata: {name: held-for-the-ui}\nspec:\n  framework: pytorch\n"
        "  runPolicy: {suspend: true}\n  replicaSpecs:\n    Worker:\n      replicas: 1\n"
        "      template: {spec: {containers: [{name: c, image: x, command: ['true']}]}}\n"
    )
    cp.kubectl("apply", "-f", str(job))
    cp.kubectl("apply", "-k", str(ROOT / "deploy" / "ui"))
    cp.kubectl("-n", SYSTEM, "rollout", "status", "deploy/mljob-ui", f"--timeout={DEADLINE:.0f}s",
               timeout=DEADLINE + 10)  # fmt: skip
    with port_forward(cp, "svc/mljob-ui", 80) as port:
        status, page = until(lambda: _try(port, "/"), 60, "the UI through port-forward")
    assert status == 200
    assert "<title>MLJobs" in page
    assert "held-for-the-ui" in page


def test_a_training_job_reports_progress_through_the_operators_service(local: LocalCluster, tmp_path: Path):
    """examples/pytorch-ddp, trained longer: its Master's reports reach the operator's progress endpoint through
    the ``mljob-operator`` Service (kube-proxy, CoreDNS, the webhook's certificate, a token the node agent projects
    for the job's audience), and the job's status moves while it trains and ends at 100%."""
    cp = local.control_plane
    overlay = write_overlay(EXAMPLES / "pytorch-ddp", tmp_path / "ddp-progress")
    job = yaml.safe_load((overlay / "job.yaml").read_text())
    job["metadata"]["name"] = "ddp-progress"
    for spec in job["spec"]["replicaSpecs"].values():
        for env in spec["template"]["spec"]["containers"][0]["env"]:
            if env["name"] == "STEPS":
                env["value"] = "3000"  # some seconds of training: several coalesced writes while it runs
    (overlay / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["patches"][0]["target"]["name"] = "ddp-progress"
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    cp.kubectl("apply", "-k", str(overlay))

    seen: list[int] = []

    def finished() -> dict | None:
        body = json.loads(cp.kubectl("get", "mljob/ddp-progress", "-o", "json"))
        status = body.get("status") or {}
        percent = (status.get("trainerStatus") or {}).get("progressPercentage")
        if status.get("phase") == "Running" and percent is not None and (not seen or seen[-1] != percent):
            seen.append(percent)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = until(finished, DEADLINE, "ddp-progress to finish", interval=0.3)
    assert status["phase"] == "Succeeded", status
    log = cp.kubectl("logs", "ddp-progress-master-0")
    assert len([p for p in seen if p < 100]) >= 2, (
        f"progress seen while Running: {seen}; the Master's log: {log[-2000:]}"
    )
    assert seen == sorted(seen), seen
    assert status["trainerStatus"]["progressPercentage"] == 100
    assert status["trainerStatus"]["step"] == status["trainerStatus"]["totalSteps"] == 3000
    assert status["progress"] == "100%"
    assert any(m["name"] == "loss" for m in status["trainerStatus"]["metrics"])
    (master,) = [p for p in job_pods(cp, "ddp-progress") if p["metadata"]["name"] == "ddp-progress-master-0"]
    env = {e["name"]: e.get("value") for e in master["spec"]["containers"][0]["env"]}
    assert env["KUBEFLOW_TRAINER_SERVER_URL"] == (
        "https://mljob-operator.mljob-system.svc:9445/apis/mljob.io/v1alpha1/namespaces/default/mljobs/ddp-progress/status"
    )
    assert "progress report" not in log  # no refusal, no failure to send
    print(f"ddp-progress: progress seen while Running: {seen}")
