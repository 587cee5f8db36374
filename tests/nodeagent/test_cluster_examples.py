"""The issue's five examples and Paddle's through the whole chain on the local cluster, as a person runs them after
``make cluster``.

``kubectl apply -k`` of each example's overlay (controlplane/examples.py: its job.yaml verbatim, plus workingDir and,
for MXNet, PATH), the real operator (``mljob operator``), the real scheduler, two node agents running every pod in a
network namespace of its own, CoreDNS: the replicas find each other only by the plugins' cluster DNS names
(``<pod>.<job>.<ns>.svc``, TF_CONFIG's, DMLC_PS_ROOT_URI). Each rank's result is checked as ``mljob run``'s tests
check it (tests/local/test_examples.py: its cases and its RESULT line), from the pods' logs through ``kubectl logs``.

One LocalCluster (controlplane/localcluster.py) for the module. The issue's three operator scenarios of
test_operator.py (a replica killed with 137 under ExitCode, OnFailure restarts against backoffLimit, deletion
stopping every process) run here again, unchanged, on this cluster's namespaced network: the module overrides
conftest's ``cluster`` and ``agent`` fixtures with it.

The PyTorch DDP, TF ParameterServer and MPI all-reduce examples run again as the PyTorchJob, TFJob and v1 MPIJob a
user of Kubeflow's training-operator writes (:func:`kubeflow_job`: job.yaml with ``replicaSpecs`` renamed and
``framework`` dropped), served by the same operator (``--kubeflow PyTorchJob,TFJob,MPIJob`` with its webhook, which
converts v1 MPIJobs to the stored v2beta1; crds/kubeflow installed), and driven by Kubeflow's own
``kubeflow-training`` SDK alone (tests/nodeagent/kubeflow_sdk_driver.py, in ``.venv-kubeflow-1.9.4``):
``create_job``, ``wait_for_job_conditions``, ``is_job_succeeded`` and ``get_job_logs``, whose RESULT lines are checked
as ``mljob run``'s. The MPI all-reduce also runs as the MPI Operator's v2beta1 MPIJob, applied with kubectl.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import test_operator as on_host
import yaml
from agentkit import core, local_cluster

from controlplane.cluster import BIN, ControlPlane, free_port
from controlplane.examples import EXAMPLES, patches, write_overlay
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(BIN / "kubectl")
NAMESPACE = "examples"
KUBEFLOW_NAMESPACE = "kubeflow-examples"
"""Where the examples run as Kubeflow jobs, under the examples' names (the MLJobs' finished pods keep the same pod
names in ``examples``)."""
KUBEFLOW_KINDS = ("PyTorchJob", "TFJob", "MPIJob")
SDK_PYTHON = ROOT / ".venv-kubeflow-1.9.4" / "bin" / "python"
SDK_DRIVER = Path(__file__).with_name("kubeflow_sdk_driver.py")
DEADLINE = 300.0
"""Seconds a job may take from apply to Succeeded: generous for 2 shared cores (they take 2-11 s here)."""

pytestmark = [
    pytest.mark.frameworks,
    pytest.mark.slow,
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]


def _local_examples() -> ModuleType:
    """tests/local/test_examples.py, for its cases and checks (a module of the same name may be collected too)."""
    spec = importlib.util.spec_from_file_location("local_examples", ROOT / "tests" / "local" / "test_examples.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


LOCAL = _local_examples()
# The five, paddle-distributed (its rendezvous pod names its own IP through the downward API) and
# mpi-allreduce (the launcher's mpirun reaches the workers' sshd with the job's SSH key Secret and hostfile ConfigMap).
CASES = [c for c in LOCAL.CASES if c.folder not in ("jax-distributed", "xgboost-distributed")]
TIMES: dict[str, float] = {}
KUBEFLOW = {
    "pytorch": ("PyTorchJob", "pytorchReplicaSpecs"),
    "tensorflow": ("TFJob", "tfReplicaSpecs"),
    "mpi": ("MPIJob", "mpiReplicaSpecs"),
}
"""An MLJob's framework -> the Kubeflow v1 kind and its replica specs' field."""
SDK_MODELS = {"PyTorchJob": "KubeflowOrgV1PyTorchJob", "TFJob": "KubeflowOrgV1TFJob", "MPIJob": "KubeflowOrgV1MPIJob"}
"""Each kind's model class in the SDK (its ``constants.JOB_PARAMETERS[kind]["model"]``)."""
MASTERS = {"pytorch-ddp": "master-0", "tensorflow-ps": "chief-0", "mpi-allreduce": "launcher-0"}
"""The replica Kubeflow labels ``job-role=master`` (its IsMasterRole), whose log ``get_job_logs`` reads by default."""
KUBEFLOW_CASES = [c for c in CASES if c.folder in MASTERS]
SDK_TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Control plane, CoreDNS and two node agents (short back-offs, as the other agent tests), the MLJob CRD."""
    with local_cluster(tmp_path_factory.mktemp("local"), "examples", agents=2) as cluster:
        cp = cluster.control_plane
        cp.kubectl("apply", "-k", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd/mljobs.mljob.io", "--timeout=60s")
        yield cluster
        print(f"local cluster start-up: {cluster.startup_seconds:.1f} s")
        for name, seconds in TIMES.items():
            print(f"{name}: kubectl apply -> Succeeded in {seconds:.1f} s")
        for name, seconds in SDK_TIMES.items():
            print(f"{name}: TrainingClient.create_job -> wait_for_job_conditions (1 s polls) in {seconds:.1f} s")


@pytest.fixture(scope="module")
def cluster(local: LocalCluster) -> ControlPlane:
    """conftest's fixture, replaced: test_operator's scenarios run on this module's cluster."""
    return local.control_plane


@pytest.fixture(scope="module")
def agent(local: LocalCluster) -> SimpleNamespace:
    """conftest's fixture, replaced: the first agent's Node (conftest's ``env`` pins pods by its name)."""
    return SimpleNamespace(node=local.agent_names[0])


@pytest.fixture(scope="module")
def kubeflow_crds(local: LocalCluster) -> None:
    """Kubeflow's ``kubeflow.org/v1`` CRDs (crds/kubeflow, as the migration guide installs them), Established."""
    cp = local.control_plane
    cp.kubectl("apply", "--server-side", "-k", str(ROOT / "crds" / "kubeflow"))
    crds = (f"crd/{kind.lower()}s.kubeflow.org" for kind in KUBEFLOW_KINDS)
    cp.kubectl("wait", "--for=condition=Established", *crds, "--timeout=60s")


@pytest.fixture(scope="module")
def operator(local: LocalCluster, kubeflow_crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``mljob operator`` for the examples' namespaces, for the module: MLJobs, and PyTorchJobs and TFJobs."""
    cp = local.control_plane
    cp.kubectl("create", "namespace", NAMESPACE)
    cp.kubectl("create", "namespace", KUBEFLOW_NAMESPACE)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    namespaces = ("--namespace", NAMESPACE, "--namespace", KUBEFLOW_NAMESPACE)
    kubeflow = ("--kubeflow", ",".join(KUBEFLOW_KINDS))
    # The webhook: admission, and the conversion of the SDK's v1 MPIJobs to the stored v2beta1.
    webhook = (
        "--webhook", "--webhook-host", "127.0.0.1", "--webhook-port", str(free_port()),
        "--webhook-secret", f"{KUBEFLOW_NAMESPACE}/mljob-webhook", "--webhook-config", "mljob-examples",
    )  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*on_host.MLJOB, "operator", *namespaces, *kubeflow, *webhook, "--standalone"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    until(lambda: "mljob-examples" in cp.kubectl("get", "validatingwebhookconfiguration", "-o", "name"), 60,
          "the operator to register its webhook", interval=0.2)  # fmt: skip
    yield
    proc.terminate()
    proc.wait(30)
    print(f"----- operator log (tail) -----\n{log.read_text(errors='replace')[-6000:]}")


class Follower:
    """``kubectl logs -f`` of each of a job's pods from the moment its container has started.

    A pod still running when the job succeeds is deleted (cleanPodPolicy Running: a DDP worker a moment behind its
    master), and its log with it, so each log is read while it is written, as a person following it would.
    """

    def __init__(self, cp: ControlPlane, job: str, folder: Path) -> None:
        self.cp, self.job, self.folder = cp, job, folder
        self.api = core(cp)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        """The last state seen of each pod, by replica (``worker-1``)."""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)
        for proc in self.procs.values():
            try:
                proc.wait(60)  # the stream ends with its container, or with its pod
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _watch(self) -> None:
        while not self.stopped.wait(0.1):
            found = self.api.list_namespaced_pod(NAMESPACE, label_selector=f"mljob.io/job-name={self.job}")
            for pod in found.items:
                replica = pod.metadata.name.removeprefix(f"{self.job}-")
                self.pods[replica] = pod.to_dict()
                states = [s.state for s in pod.status.container_statuses or ()]
                if replica not in self.procs and any(s.running or s.terminated for s in states):
                    with open(self.folder / f"{replica}.log", "wb") as out:
                        self.procs[replica] = subprocess.Popen(
                            [KUBECTL, "logs", "-f", "-n", NAMESPACE, pod.metadata.name],
                            env={**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)},
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )

    def lines(self) -> list[str]:
        """Every followed line, prefixed ``[replica] `` as ``mljob run`` and ``mljob logs`` print them."""
        return [
            f"[{path.stem}] {line}"
            for path in sorted(self.folder.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
        ]


def job_status(cp: ControlPlane, name: str) -> dict[str, Any]:
    """The MLJob's status, through the client (polled: cheaper than a kubectl process each time)."""
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(core(cp).api_client)
    job = custom.get_namespaced_custom_object("mljob.io", "v1alpha1", NAMESPACE, "mljobs", name)
    return dict(job.get("status") or {})


def finished(cp: ControlPlane, name: str) -> str | None:
    phase = job_status(cp, name).get("phase")
    return str(phase) if phase in ("Succeeded", "Failed") else None


@pytest.mark.parametrize("example", CASES, ids=[c.folder for c in CASES])
def test_example_trains_through_the_operator(local: LocalCluster, operator: None, example: Any, tmp_path: Path):
    cp = local.control_plane
    assert (ROOT / ".venv-mxnet" / "bin" / "python").exists(), "no .venv-mxnet: run `make setup-mxnet`"
    overlay = write_overlay(EXAMPLES / example.folder, tmp_path / "overlay")
    (tmp_path / "logs").mkdir()
    with Follower(cp, example.folder, tmp_path / "logs") as follower:
        started = time.monotonic()
        cp.kubectl("apply", "-n", NAMESPACE, "-k", str(overlay))
        phase = until(lambda: finished(cp, example.folder), DEADLINE, f"{example.folder} to finish", interval=0.2)
        TIMES[example.folder] = time.monotonic() - started
        status = job_status(cp, example.folder)
        tail = "\n".join(follower.lines()[-60:])  # what the replicas said last: why it failed
        assert phase == "Succeeded", f"{status}\n{cp.kubectl('get', 'pods', '-n', NAMESPACE, '-o', 'wide')}\n{tail}"
        stopped = [r for r, result in example.summary.items() if result == "stopped"]
        # The roles that serve until stopped (TF's workers and PS) are stopped by the operator: their pods go.
        until(lambda: not set(stopped) & pod_replicas(cp, example.folder), 60, "the served roles to be stopped")
    out = "\n".join(follower.lines())

    assert status.get("restartCount", 0) == 0, status
    assert all(r.get("restarts", 0) == 0 for r in status.get("replicaStatuses", {}).values()), status
    results = {m["replica"]: m for m in map(LOCAL.RESULT.match, out.splitlines()) if m}
    assert sorted(results) == sorted(example.checkers), out
    for replica, match in results.items():
        assert match["status"] == "ok", f"{replica}: {match.group(0)}"
        assert float(match["last"]) < float(match["first"]), f"{replica}: the loss did not fall"
        assert float(match["allreduce"]) == example.allreduce, f"{replica}: {match.group(0)}"
    # Every replica ran in a network of its own, on the cluster's pod range, and none restarted.
    ips = {r: (p.get("status") or {}).get("pod_ip") for r, p in follower.pods.items()}
    assert set(example.summary) <= set(ips), ips
    assert len(set(ips.values())) == len(ips), ips
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.0.0/16") for ip in ips.values()), ips
    for replica, pod in follower.pods.items():
        for s in (pod.get("status") or {}).get("container_statuses") or ():
            assert s["restart_count"] == 0, f"{replica} was restarted: {s}"
            done = (s.get("state") or {}).get("terminated")
            if replica in example.checkers and done:
                assert done["exit_code"] == 0, f"{replica}: {done}"


def pod_replicas(cp: ControlPlane, job: str) -> set[str]:
    names = cp.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"mljob.io/job-name={job}", "-o", "name").split()
    return {n.removeprefix(f"pod/{job}-") for n in names}


def kubeflow_job(folder: Path, version: str = "v1") -> dict[str, Any]:
    """``folder``/job.yaml (an MLJob) as the Kubeflow v1 job a training-operator user writes, for the node agent.

    Generated, not committed beside the example, so it cannot drift from job.yaml: ``replicaSpecs`` becomes the
    kind's field (``pytorchReplicaSpecs``), ``framework`` goes, ``runPolicy`` stays, the containers keep their names
    (``pytorch``, ``tensorflow``, ``mpi``: the SDK's and Kubeflow's defaults). The node agent's additions are
    controlplane/examples.py's own patches (workingDir, an image's environment), applied before the rename. An MPI
    job's options become spec fields; as v1 its workers lose their command, as Kubeflow's e2e MPIJob has none
    (training-operator ran ``sleep 365d`` there, mljob runs sshd); ``version="v2beta1"`` gives the MPI Operator's
    MPIJob instead, commands kept.
    """
    # Through JSON: a YAML alias (tensorflow-ps's ``*pod``) would otherwise be one dict shared by every role.
    job = json.loads(json.dumps(yaml.safe_load((folder / "job.yaml").read_text())))
    for patch in patches(job, folder.resolve()):
        assert patch["op"] == "add", patch
        *parents, last = patch["path"].split("/")[1:]
        target = job
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), patch["value"])
        else:
            target[last] = patch["value"]
    spec = job["spec"]
    framework = spec.pop("framework")
    kind, specs_field = KUBEFLOW[framework]
    replica_specs = spec.pop("replicaSpecs")
    if framework == "mpi":  # the options are spec fields
        spec.update(spec.pop("frameworkOptions", {}))
        if version == "v2beta1":  # the MPI Operator's: every option a field of its own, the workers' command kept
            body = {"slotsPerWorker": spec.pop("slotsPerWorker", 1), "mpiReplicaSpecs": replica_specs}
            metadata = {"name": job["metadata"]["name"]}
            return {
                "apiVersion": "kubeflow.org/v2beta1",
                "kind": "MPIJob",
                "metadata": metadata,
                "spec": {**body, **spec},
            }
        assert set(spec) <= {"runPolicy", "slotsPerWorker"}, f"{folder}/job.yaml: not an MPIJob v1 field: {spec}"
        worker = replica_specs["Worker"]["template"]["spec"]["containers"][0]
        del worker["command"]  # as Kubeflow's e2e MPIJob: a worker with no command (mljob runs sshd there)
    extra = sorted(set(spec) - {"runPolicy", "slotsPerWorker"})
    assert not extra, f"{folder}/job.yaml: no Kubeflow field for {extra}"
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": kind,
        "metadata": {"name": job["metadata"]["name"]},
        "spec": {specs_field: replica_specs, **spec},
    }


def replica_of(job: str, pod: str) -> str:
    """``worker-1`` from ``<job>-worker-1``; an MPIJob's ``<job>-launcher`` is ``launcher-0``."""
    name = pod.removeprefix(f"{job}-")
    return name if re.search(r"-\d+$", name) else f"{name}-0"


def pod_of(job: str, replica: str) -> str:
    """The pod of ``replica`` of the Kubeflow job ``job``: ``<job>-launcher`` for an MPIJob's launcher."""
    return f"{job}-launcher" if replica == "launcher-0" else f"{job}-{replica}"


def sdk_results(out: dict[str, Any]) -> dict[str, re.Match[str]]:
    """The RESULT lines in the logs the SDK read, by replica (the pod name less the job's), as ``mljob run`` prints
    them (``[master-0] RESULT ok ...``), so tests/local/test_examples.py's pattern reads them."""
    logs = dict(out["master_logs"])
    for by_pod in out["replica_logs"].values():
        logs.update(by_pod)
    lines = [f"[{replica_of(out['name'], pod)}] {line}" for pod, log in logs.items() for line in log.splitlines()]
    return {m["replica"]: m for m in map(LOCAL.RESULT.match, lines) if m}


@pytest.mark.parametrize("example", KUBEFLOW_CASES, ids=[c.folder for c in KUBEFLOW_CASES])
def test_example_trains_as_a_kubeflow_job_through_the_sdk(
    local: LocalCluster, operator: None, example: Any, tmp_path: Path
) -> None:
    """The example as a PyTorchJob / TFJob, created, awaited and read back through Kubeflow's SDK only."""
    assert SDK_PYTHON.exists(), f"no {SDK_PYTHON.parents[1].name} (Kubeflow's SDK): run `make setup-kubeflow-e2e`"
    cp = local.control_plane
    job = kubeflow_job(EXAMPLES / example.folder)
    (tmp_path / "job.json").write_text(json.dumps(job, indent=1))
    master = MASTERS[example.folder]
    others = [r for r in example.checkers if r != master]
    command = [
        str(SDK_PYTHON), str(SDK_DRIVER),
        f"--kubeconfig={cp.kubeconfig}",
        f"--namespace={KUBEFLOW_NAMESPACE}",
        f"--job={tmp_path / 'job.json'}",
        f"--wait-timeout={DEADLINE:.0f}",
        *(f"--replica={r}" for r in others),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE + 120, check=False)
    pods = cp.kubectl("get", "pods", "-n", KUBEFLOW_NAMESPACE, "-o", "wide", "--show-labels")
    assert done.returncode == 0, f"the SDK driver exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n{pods}"
    (tmp_path / "sdk.json").write_text(done.stdout)  # what the SDK got, kept with the test's files
    out = json.loads(done.stdout)
    SDK_TIMES[f"{job['kind']} {example.folder}"] = out["seconds"]

    # What the SDK made of it: its model, Succeeded (the condition it waits for, newest last: its status line reads
    # conditions[-1]), no restart ever, and the primary replica among the succeeded.
    assert out["model"] == SDK_MODELS[job["kind"]], out["model"]
    assert out["succeeded"] is True, out["job"]
    status = out["job"]["status"]
    conditions = [c["type"] for c in status["conditions"]]
    assert conditions[-1] == "Succeeded", status
    assert "Restarting" not in conditions, status
    assert "Failed" not in conditions, status
    role = master.split("-")[0].capitalize()
    assert status["replicaStatuses"][role].get("succeeded") == 1, status
    # get_job_logs(is_master=True) read the one master pod, and RESULT lines from every rank that checks.
    assert out["master_pods"] == [pod_of(job["metadata"]["name"], master)], out["master_pods"]
    assert list(out["master_logs"]) == out["master_pods"], out["master_logs"]
    assert all(phase == "Succeeded" for phase in out["replica_phases"].values()), out["replica_phases"]
    results = sdk_results(out)
    everything = json.dumps({"master": out["master_logs"], **out["replica_logs"]}, indent=1)
    assert sorted(results) == sorted(example.checkers), everything
    for replica, match in results.items():
        assert match["status"] == "ok", f"{replica}: {match.group(0)}"
        assert float(match["last"]) < float(match["first"]), f"{replica}: the loss did not fall"
        assert float(match["allreduce"]) == example.allreduce, f"{replica}: {match.group(0)}"
    # Then the driver's delete_job: the pods go with the job (a TF job's workers serve until then, as under
    # training-operator's default cleanPodPolicy None), so no process outlives the test.
    print(f"{job['kind']} {example.folder}: pods before delete_job: {out['pods_at_end']}")
    selector = f"training.kubeflow.org/job-name={job['metadata']['name']}"
    until(
        lambda: not cp.kubectl("get", "pods", "-n", KUBEFLOW_NAMESPACE, "-l", selector, "-o", "name").strip(),
        90,
        f"{example.folder}'s pods to go after delete_job",
    )


def test_mpi_allreduce_trains_as_the_mpi_operators_v2beta1_mpijob(
    local: LocalCluster, operator: None, tmp_path: Path
) -> None:
    """examples/mpi-allreduce as the MPI Operator's v2beta1 MPIJob, applied with kubectl: its children carry the MPI
    Operator's names and labels, and the ranks train for real, mpirun reaching the workers' sshd."""
    cp = local.control_plane
    job = kubeflow_job(EXAMPLES / "mpi-allreduce", version="v2beta1")
    name = job["metadata"]["name"]
    (tmp_path / "mpijob.json").write_text(json.dumps(job, indent=1))
    resource = "mpijobs.v2beta1.kubeflow.org"

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = json.loads(cp.kubectl("get", resource, name, "-n", KUBEFLOW_NAMESPACE, "-o", "json"))
        true = {c["type"] for c in (body.get("status") or {}).get("conditions") or () if c["status"] == "True"}
        return body if true & {"Succeeded", "Failed"} else None

    started = time.monotonic()
    cp.kubectl("apply", "-n", KUBEFLOW_NAMESPACE, "-f", str(tmp_path / "mpijob.json"))
    body = until(finished, DEADLINE, f"the v2beta1 MPIJob {name} to finish", interval=0.2)
    TIMES[f"MPIJob v2beta1 {name}"] = time.monotonic() - started
    selector = f"training.kubeflow.org/job-name={name}"
    pods = json.loads(cp.kubectl("get", "pods", "-n", KUBEFLOW_NAMESPACE, "-l", selector, "-o", "json"))["items"]
    launcher_log = cp.kubectl("logs", "-n", KUBEFLOW_NAMESPACE, f"{name}-launcher")
    conditions = {c["type"]: c for c in body["status"]["conditions"]}
    assert conditions["Succeeded"]["status"] == "True", f"{body['status']}\n{launcher_log}"
    assert conditions["Succeeded"]["reason"] == "MPIJobSucceeded"
    labels = {p["metadata"]["name"]: p["metadata"]["labels"] for p in pods}
    launcher = labels[f"{name}-launcher"]  # the launcher's pod stays (cleanPodPolicy None); the workers are stopped
    assert launcher["training.kubeflow.org/operator-name"] == "mpi-operator"
    assert launcher["training.kubeflow.org/job-role"] == "launcher"
    results = [m for m in map(LOCAL.RESULT.match, (f"[launcher-0] {line}" for line in launcher_log.splitlines())) if m]
    assert len(results) == 1, launcher_log
    assert results[0]["status"] == "ok", results[0].group(0)
    assert float(results[0]["last"]) < float(results[0]["first"]), results[0].group(0)
    assert float(results[0]["allreduce"]) == 6.0, results[0].group(0)
    cp.kubectl("delete", resource, name, "-n", KUBEFLOW_NAMESPACE, "--wait=true")
    until(
        lambda: not cp.kubectl("get", "pods", "-n", KUBEFLOW_NAMESPACE, "-l", selector, "-o", "name").strip(),
        90,
        f"{name}'s pods to go with the MPIJob",
    )


# test_operator.py's scenarios, collected again here with the fixtures above, after the examples: the garbage
# collector learns the MLJob kind (installed at the module's start) only on its 30-second rediscovery, and until then
# a deleted job's pods stay (the deletion scenario waited 40 s for them when it ran first).
jobs = on_host.jobs
test_a_replica_killed_by_a_signal_under_exit_code_is_recreated_and_the_job_succeeds = (
    on_host.test_a_replica_killed_by_a_signal_under_exit_code_is_recreated_and_the_job_succeeds
)
test_in_place_restarts_under_on_failure_count_against_backoff_limit = (
    on_host.test_in_place_restarts_under_on_failure_count_against_backoff_limit
)
test_deleting_a_running_job_stops_every_process = on_host.test_deleting_a_running_job_stops_every_process
