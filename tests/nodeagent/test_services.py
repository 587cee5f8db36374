"""Services as pods on a cluster reach them: ClusterIPs through the real kube-proxy in the pods' network, and the
API server at ``kubernetes.default.svc`` with the ServiceAccount token admission mounts (in-cluster config); and the
API server reaching pods, through its egress selector's proxy.

One LocalCluster for the module (control plane with ServiceAccount admission, the pods' network namespace, CoreDNS,
kube-proxy, one node agent); conftest's ``cluster`` and ``agent`` fixtures are replaced by it, so ``env`` gives each
test a namespace there.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from agentkit import local_cluster

from controlplane.cluster import BIN, ControlPlane
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

pytestmark = [
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "kube-proxy").exists(), reason="no kube-proxy binary: run `make controlplane`"),
]

DEADLINE = 120.0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("services"), "services", agents=1) as cluster:
        yield cluster
        proxy = cluster.services.startup_seconds
        print(f"local cluster start-up: {cluster.startup_seconds:.1f} s (kube-proxy {proxy:.1f} s)")


@pytest.fixture(scope="module")
def cluster(local: LocalCluster) -> ControlPlane:
    return local.control_plane


@pytest.fixture(scope="module")
def agent(local: LocalCluster) -> SimpleNamespace:
    return SimpleNamespace(node=local.agent_names[0])


def finished(env, name: str) -> str:
    """The pod's phase once it is Succeeded or Failed."""
    done = env.wait(name, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "the end", DEADLINE)
    return str(done["status"]["phase"])


RETRY = """
import sys, time, urllib.request
def get(url, deadline=time.monotonic() + 60):
    # A Service's rules reach kube-proxy a moment after the Service: retried, as a client in a cluster would
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError as error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
"""


def web_pod() -> dict:
    """A web server answering ``/name`` with its pod's name (a downward API volume, served by http.server)."""
    return {
        "name": "web",
        "command": ["python", "-m", "http.server", "8080", "--directory", "/data"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "volumeMounts": [{"name": "info", "mountPath": "/data"}],
    }


INFO = [{"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]


def test_a_cluster_ip_service_balances_over_its_pods(env):
    for name in ("web-a", "web-b"):
        env.pod(name, web_pod(), policy="Always", volumes=INFO)
        env.api.patch_namespaced_pod(name, env.namespace, {"metadata": {"labels": {"app": "web"}}})
    service = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
               "ports": [{"port": 80, "targetPort": "http"}]}}  # fmt: skip
    ip = env.api.create_namespaced_service(env.namespace, service).spec.cluster_ip
    for name in ("web-a", "web-b"):
        env.phase(name, "Running")
    code = RETRY + (
        "seen = {get('http://web/name') for _ in range(40)}\n"
        f"by_ip = get('http://{ip}:80/name')\n"
        "print(' '.join(sorted(seen)), by_ip in seen)\n"
    )
    env.pod("client", {"name": "main", "command": ["python", "-c", code]})
    assert finished(env, "client") == "Succeeded", env.kubectl("logs", "client")
    assert env.kubectl("logs", "client") == "web-a web-b True\n"
    # The API server reaches the pods too, through its egress proxy (controlplane/egress.py): its service proxy.
    answer = env.cp.kubectl("get", "--raw", f"/api/v1/namespaces/{env.namespace}/services/web:80/proxy/name")
    assert answer in ("web-a", "web-b")


def test_a_pod_reaches_itself_through_its_service(env):
    """Hairpin: the Service picks the very pod that asks (the only endpoint)."""
    script = RETRY + "print(get('http://self/name'))\n"
    container = web_pod()
    container["command"] = ["sh", "-c", 'python -m http.server 8080 --directory /data & python -c "$0"', script]
    env.pod("self-0", container, volumes=INFO)
    env.api.patch_namespaced_pod("self-0", env.namespace, {"metadata": {"labels": {"app": "self"}}})
    service = {"metadata": {"name": "self"}, "spec": {"selector": {"app": "self"},
               "ports": [{"port": 80, "targetPort": 8080}]}}  # fmt: skip
    env.api.create_namespaced_service(env.namespace, service)
    # the server keeps running, so the pod is not Succeeded: its log says it reached itself
    until(lambda: "self-0" in env.kubectl("logs", "self-0").splitlines(), DEADLINE, "the pod to reach itself")


def test_a_pod_uses_in_cluster_config_to_reach_the_api_server(env):
    """The kubernetes client's in-cluster config, as an operator or a training job's launcher uses it: the env
    (KUBERNETES_SERVICE_HOST/PORT), the token and CA that ServiceAccount admission mounted, the Service's ClusterIP."""
    env.cp.kubectl("-n", env.namespace, "create", "role", "read-pods", "--verb=get,list", "--resource=pods")
    env.cp.kubectl(
        "-n", env.namespace, "create", "rolebinding", "read-pods", "--role=read-pods",
        f"--serviceaccount={env.namespace}:default",
    )  # fmt: skip
    code = (
        "import os\n"
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "me = client.CoreV1Api().read_namespaced_pod(os.environ['HOSTNAME'], ns)\n"
        "print(os.environ['KUBERNETES_SERVICE_HOST'], me.metadata.uid, me.spec.service_account_name)\n"
    )
    created = env.pod("insider", {"name": "main", "command": ["python", "-c", code]})
    volumes = [v["name"] for v in created["spec"]["volumes"]]
    assert [v for v in volumes if v.startswith("kube-api-access-")], volumes  # admission added the token volume
    assert finished(env, "insider") == "Succeeded", env.kubectl("logs", "insider")
    assert env.kubectl("logs", "insider") == f"10.0.0.1 {created['metadata']['uid']} default\n"
