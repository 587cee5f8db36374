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
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
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
from agentkit import core

from controlplane.cluster import BIN, ControlPlane
from controlplane.examples import EXAMPLES, write_overlay
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(BIN / "kubectl")
NAMESPACE = "examples"
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
# The five, and paddle-distributed: its rendezvous pod names its own IP through the downward API.
CASES = [c for c in LOCAL.CASES if c.folder not in ("jax-distributed", "xgboost-distributed")]
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Control plane, CoreDNS and two node agents (short back-offs, as the other agent tests), the MLJob CRD."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("local"),
        netns=f"mljob-test-examples-{os.getpid()}",
        agents=2,
        agent_args=("--backoff=0.5", "--backoff-max=2", "--lease-renew=1", "--status-interval=2"),
        log=print,
    )
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.stop)
        cluster.start()
        cp = cluster.control_plane
        cp.kubectl("apply", "-k", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd/mljobs.mljob.io", "--timeout=60s")
        yield cluster
        print(f"local cluster start-up: {cluster.startup_seconds:.1f} s")
        for name, seconds in TIMES.items():
            print(f"{name}: kubectl apply -> Succeeded in {seconds:.1f} s")


@pytest.fixture(scope="module")
def cluster(local: LocalCluster) -> ControlPlane:
    """conftest's fixture, replaced: test_operator's scenarios run on this module's cluster."""
    return local.control_plane


@pytest.fixture(scope="module")
def agent(local: LocalCluster) -> SimpleNamespace:
    """conftest's fixture, replaced: the first agent's Node (conftest's ``env`` pins pods by its name)."""
    return SimpleNamespace(node=local.agent_names[0])


@pytest.fixture(scope="module")
def operator(local: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``mljob operator`` for the examples' namespace, for the module."""
    cp = local.control_plane
    cp.kubectl("create", "namespace", NAMESPACE)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*on_host.MLJOB, "operator", "--namespace", NAMESPACE, "--standalone"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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
        assert phase == "Succeeded", f"{status}\n{cp.kubectl('get', 'pods', '-n', NAMESPACE, '-o', 'wide')}"
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
