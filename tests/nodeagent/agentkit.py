"""What the node agent's tests share beyond fixtures: the agent as a subprocess, a test's namespace, finding a
pod's processes. A module of its own, not conftest.py: tests that import ``conftest`` by name get whichever
directory's conftest pytest loaded last (tests/operator's, when both directories are on the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controlplane import ControlPlane
from controlplane.localcluster import LocalCluster
from controlplane.process import LoggedProcess
from controlplane.waiting import until

TIMEOUT = 60.0
MARK = "MLJOB_TEST_MARK"
FAST = ("--backoff=0.5", "--backoff-max=2", "--lease-renew=1", "--status-interval=2", "--sync-frequency=1")
"""The agents' test settings: short restart back-offs, lease and heartbeat intervals, API volume syncs."""


class AgentProcess(LoggedProcess):
    """``mljob node-agent`` for one Node, as a subprocess with its log in a file."""

    grace = 30.0  # the agent stops its pods first

    def __init__(self, cp: ControlPlane, node: str, folder: Path, *extra: str) -> None:
        super().__init__(folder / "agent.log")
        self.cp, self.node, self.folder = cp, node, folder
        self.state = folder / "state"
        self.pair = cp.kubelet_serving_pair(node)
        self.extra = extra

    def start(self) -> AgentProcess:
        command = [sys.executable, "-c", "from mljob.cli import main; main()", "node-agent"]
        args = [
            f"--kubeconfig={self.cp.kubeconfig}",
            f"--node={self.node}",
            "--node-ip=127.0.0.1",
            "--port=0",
            f"--state-dir={self.state}",
            f"--tls-cert-file={self.pair.cert}",
            f"--tls-private-key-file={self.pair.key}",
            f"--client-ca-file={self.cp.ca}",
            *FAST,
            "--cpu=8",
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        return self


def core(cp: ControlPlane) -> Any:
    import kubernetes

    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(cp.kubeconfig)))


def extensions(cp: ControlPlane) -> Any:
    import kubernetes

    return kubernetes.client.ApiextensionsV1Api(kubernetes.config.new_client_from_config(str(cp.kubeconfig)))


def crd_established(cp: ControlPlane) -> bool:
    got = extensions(cp).read_custom_resource_definition("mljobs.mljob.io")
    return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or ())


class Env:
    """A test's namespace on the cluster, with the calls the tests make."""

    def __init__(self, cp: ControlPlane, namespace: str, node: str) -> None:
        self.cp, self.namespace, self.node = cp, namespace, node
        self.api = core(cp)

    def pod(
        self, name: str, *containers: dict[str, Any], policy: str = "Never", mark: str | None = None, **spec: Any
    ) -> dict[str, Any]:
        """Create a pod bound to the agent's node; every container gets the marker variable ``mark``."""
        mark = mark or uuid.uuid4().hex
        for c in containers:
            c.setdefault("image", "none")
            c.setdefault("env", []).append({"name": MARK, "value": mark})
        for c in spec.get("initContainers") or ():
            c.setdefault("image", "none")
            c.setdefault("env", []).append({"name": MARK, "value": mark})
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"nodeName": self.node, "restartPolicy": policy, "containers": list(containers), **spec},
        }
        return dict(self.api.create_namespaced_pod(self.namespace, body).to_dict())

    def read(self, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            response = self.api.read_namespaced_pod(name, self.namespace, _preload_content=False)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise
        raw = json.loads(response.data)
        return dict(raw)

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Poll the pod (as the API server has it, camelCase JSON) until ``predicate`` holds."""

        def check() -> Any:
            pod = self.read(name)
            return pod is not None and predicate(pod) and pod

        return until(check, timeout, f"{self.namespace}/{name}: {what}", interval=0.1)

    def phase(self, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return dict(self.wait(name, lambda p: p.get("status", {}).get("phase") == phase, f"phase {phase}", timeout))

    def gone(self, name: str, timeout: float = TIMEOUT) -> None:
        until(lambda: self.read(name) is None, timeout, f"{self.namespace}/{name} to be deleted", interval=0.1)

    def kubectl(self, *args: str) -> str:
        return self.cp.kubectl("-n", self.namespace, *args)


def processes(mark: str) -> list[int]:
    """Live processes whose environment carries the marker."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                if stat[0] not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def status_of(pod: dict[str, Any], container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for s in [*(status.get("containerStatuses") or ()), *(status.get("initContainerStatuses") or ())]:
        if s["name"] == container:
            return dict(s)
    return {}


def start_agent(cluster: ControlPlane, folder: Path, node: str, *extra: str) -> AgentProcess:
    """Start an agent and wait until its Node is Ready."""
    folder.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(cluster, node, folder, *extra).start()
    api = core(cluster)

    def ready() -> bool:
        if agent.proc is not None and agent.proc.poll() is not None:
            raise RuntimeError(f"the agent exited: {agent.log()[-3000:]}")
        try:
            got = api.read_node(node)
        except Exception:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in got.status.conditions or ())

    until(ready, TIMEOUT, f"node {node} to be Ready")
    return agent


@contextlib.contextmanager
def local_cluster(folder: Path, what: str, agents: int) -> Iterator[LocalCluster]:
    """A LocalCluster (network namespaces, CoreDNS, kube-proxy, ``agents`` agents with :data:`FAST` settings) for a
    test module; its namespace is ``mljob-test-<what>-<pid>`` (conftest removes those a killed run left)."""
    cluster = LocalCluster(folder, netns=f"mljob-test-{what}-{os.getpid()}", agents=agents, agent_args=FAST, log=print)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster
