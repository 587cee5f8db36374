"""Cluster DNS from inside pod sandboxes: CoreDNS (built from its module) serving the real API server's names.

The pods are real objects in the API server, a headless Service with publishNotReadyAddresses names them, and the
test writes each pod's status.podIP through the status subresource (the address its sandbox got), as a kubelet
would; the pods use a scheduler that does not exist, so no kubelet (kwok or an agent) ever takes them. Then, from
inside the sandboxes: the pod's FQDN, the Service, the short names through the search list, reverse lookups, and
a torch gloo all_reduce between two sandboxes that find each other by those names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from controlplane.cluster import BIN
from controlplane.clusterdns import ClusterDNS
from controlplane.waiting import until
from mljob.nodeagent.network import ClusterNetwork, NamespacedNetwork, missing_privileges, node_pod_cidr
from mljob.nodeagent.sandbox import PodIdentity, Sandbox

pytestmark = [
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "dns-train"
TIMEOUT = 60.0


@dataclass
class Job:
    """Two pods named by a headless Service, each with a sandbox whose IP the API server has as its podIP."""

    namespace: str
    service: str
    sandboxes: dict[str, Sandbox]  # by pod name


@pytest.fixture(scope="module")
def dns(cluster: ControlPlane) -> Iterator[ClusterDNS]:
    net = ClusterNetwork(f"mljob-test-dns-{os.getpid()}")
    net.destroy()
    net.create()
    server = ClusterDNS(cluster, net, log=print)
    try:
        yield server.start()
    finally:
        server.stop()
        net.destroy()


def _core(cp: ControlPlane) -> Any:
    import kubernetes

    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(cp.kubeconfig)))


@pytest.fixture(scope="module")
def job(cluster: ControlPlane, dns: ClusterDNS) -> Iterator[Job]:
    api = _core(cluster)
    api.create_namespace({"metadata": {"name": NAMESPACE}})
    api.create_namespaced_service(
        NAMESPACE,
        {
            "metadata": {"name": "job1"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"job": "job1"},
                "ports": [{"name": "dist", "port": 29500}],
            },
        },
    )
    network = NamespacedNetwork(dns.network, node_pod_cidr(0), nameserver=dns.address)
    sandboxes = {}
    for name in ("job1-worker-0", "job1-worker-1"):
        body = {
            "metadata": {"name": name, "labels": {"job": "job1"}},
            "spec": {
                "hostname": name,
                "subdomain": "job1",
                "schedulerName": "nobody",  # never bound: no kubelet writes this pod's status but the test
                "containers": [{"name": "main", "image": "none"}],
            },
        }
        created = api.create_namespaced_pod(NAMESPACE, body)
        identity = PodIdentity(created.metadata.uid, name, NAMESPACE, name, "job1")
        sandbox = sandboxes[name] = network.create(identity)
        status = {"status": {"phase": "Running", "podIP": sandbox.ip, "podIPs": [{"ip": sandbox.ip}]}}
        api.patch_namespaced_pod_status(name, NAMESPACE, status)
    try:
        yield Job(NAMESPACE, "job1", sandboxes)
    finally:
        for uid in network.sandboxes():
            network.remove_uid(uid)
        api.delete_namespace(NAMESPACE)
        api.api_client.close()


def lookup(sandbox: Sandbox, name: str) -> set[str]:
    """The IPv4 addresses glibc finds for ``name`` inside the sandbox (its resolv.conf, its search list)."""
    done = subprocess.run(
        [*sandbox.prefix, "getent", "ahostsv4", name], capture_output=True, text=True, timeout=30, check=False
    )
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def resolves(sandbox: Sandbox, name: str, want: set[str]) -> set[str]:
    """Wait until ``name`` resolves to ``want`` in the sandbox (names exist once the EndpointSlice does)."""
    return until(lambda: lookup(sandbox, name) == want and want, TIMEOUT, f"{name} -> {sorted(want)}", interval=0.2)


def test_a_pods_fqdn_resolves_from_another_pod(job: Job):
    a, b = job.sandboxes["job1-worker-0"], job.sandboxes["job1-worker-1"]
    resolves(a, f"job1-worker-1.job1.{job.namespace}.svc.cluster.local", {b.ip})
    resolves(b, f"job1-worker-0.job1.{job.namespace}.svc.cluster.local", {a.ip})


def test_short_names_resolve_through_the_search_list(job: Job):
    a, b = job.sandboxes["job1-worker-0"], job.sandboxes["job1-worker-1"]
    resolves(a, "job1-worker-1.job1", {b.ip})  # what the framework plugins put in MASTER_ADDR: <pod>.<job>
    resolves(a, f"job1-worker-1.job1.{job.namespace}", {b.ip})
    resolves(a, f"job1-worker-1.job1.{job.namespace}.svc", {b.ip})


def test_the_headless_service_resolves_to_every_pod(job: Job):
    a, b = job.sandboxes["job1-worker-0"], job.sandboxes["job1-worker-1"]
    resolves(a, "job1", {a.ip, b.ip})
    resolves(b, f"job1.{job.namespace}.svc.cluster.local", {a.ip, b.ip})


def test_reverse_lookup_names_the_pod(job: Job):
    a, b = job.sandboxes["job1-worker-0"], job.sandboxes["job1-worker-1"]
    resolves(a, "job1-worker-1.job1", {b.ip})
    done = subprocess.run([*a.prefix, "getent", "hosts", b.ip], capture_output=True, text=True, timeout=30)
    assert done.stdout.split()[1:] == [f"job1-worker-1.job1.{job.namespace}.svc.cluster.local"]


def test_names_outside_the_cluster_do_not_exist(job: Job):
    """Nothing leaves the machine: CoreDNS answers NXDOMAIN itself rather than forwarding."""
    a = job.sandboxes["job1-worker-0"]
    done = subprocess.run([*a.prefix, "getent", "hosts", "example.com"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2  # getent: key not found
    assert lookup(a, f"nobody.job1.{job.namespace}.svc.cluster.local") == set()


@pytest.mark.frameworks
@pytest.mark.slow
def test_torch_gloo_all_reduce_between_two_sandboxes_by_their_dns_names(job: Job, tmp_path: Path):
    """The PyTorch DDP example, rank 0 and 1 in two sandboxes, rendezvous at MASTER_ADDR=job1-worker-0.job1."""
    a, b = job.sandboxes["job1-worker-0"], job.sandboxes["job1-worker-1"]
    resolves(b, "job1-worker-0.job1", {a.ip})
    script = ROOT / "examples" / "pytorch-ddp" / "train.py"
    port = str(29500 + uuid.uuid4().int % 1000)
    procs = []
    for rank, sandbox in enumerate((a, b)):
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "MASTER_ADDR": "job1-worker-0.job1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "STEPS": "30",
            "OMP_NUM_THREADS": "1",
        }
        out = (tmp_path / f"rank{rank}.log").open("w")
        procs.append(
            subprocess.Popen(
                [*sandbox.prefix, sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        )
    codes = [proc.wait(timeout=300) for proc in procs]
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs
    for rank, log in enumerate(logs):
        assert f"rank {rank} of 2, master job1-worker-0.job1:{port}" in log
        assert "RESULT ok" in log, log
        assert "allreduce=3.0" in log, log
