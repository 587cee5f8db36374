"""The local cluster that trains for real: the control plane, the pods' network with cluster DNS, the node agent.

How the pieces reach each other (docs/node-agent.md, "Network and DNS"):

* the control plane, the operator, the node agent and the user's kubectl stay in the host's network namespace, on
  127.0.0.1, exactly as every other test and ``make cluster`` without the agent have them;
* the pods live in the cluster's private network namespace (mljob.nodeagent.network), each in a namespace of its
  own on the cluster's bridge, and so does CoreDNS, which reads the API server through a relay socket made inside
  that namespace (controlplane/clusterdns.py);
* the agent makes and removes the pods' namespaces from the host (``ip -n``, ``nsenter``), serves their logs to
  the API server on 127.0.0.1, and runs their commands through each sandbox's prefix.

Nothing a pod sends can leave the machine, and nothing in the host's network changes. All of it needs root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from controlplane.cluster import DEFAULT_NODES, SERVICE_CIDR, ControlPlane, Node, StartError
from controlplane.clusterdns import ClusterDNS
from controlplane.egress import EgressProxy
from controlplane.serviceproxy import ServiceProxy
from controlplane.waiting import until
from mljob.nodeagent.network import CLUSTER_CIDR, ClusterNetwork, missing_privileges, node_pod_cidr

AGENT_CAPACITY = ("--cpu=64", "--memory=256Gi")
"""What each agent's Node advertises: nothing is enforced on the host, and the examples ask for a CPU and 1-2 GiB per
replica, so a 2-core machine's real size would leave a 4-replica job unschedulable (agent_args may override it)."""


def agent_supports_pod_networks() -> bool:
    """Whether this checkout's ``mljob node-agent`` takes ``--network namespaced`` (the agent lands separately)."""
    try:
        from mljob.nodeagent.command import parser
    except ImportError:
        return False
    return "namespaced" in parser().format_help()


class LocalCluster:
    """The control plane, then the cluster network and CoreDNS, then ``agents`` node agents (0: pods only by kwok).

    With agents there are no kwok Nodes: every pod the scheduler binds runs for real on an agent's Node.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        netns: str = "mljob",
        agents: int = 1,
        kwok_nodes: Sequence[Node] | None = None,
        agent_args: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.log = log or (lambda message: None)
        nodes = tuple(kwok_nodes) if kwok_nodes is not None else (() if agents else DEFAULT_NODES)
        self.network = ClusterNetwork(netns)
        workdir.mkdir(parents=True, exist_ok=True)
        self.egress = EgressProxy(workdir / "egress.sock", self.network, inside=(CLUSTER_CIDR, SERVICE_CIDR))
        egress = self.egress.write_config(workdir / "egress.yaml")
        self.control_plane = ControlPlane(
            workdir / "controlplane",
            nodes=nodes,
            service_account_admission=True,
            apiserver_args=(f"--egress-selector-config-file={egress}",),
            log=self.log,
        )
        self.dns = ClusterDNS(self.control_plane, self.network, log=self.log)
        self.agent_names = tuple(f"{netns}-node-{i}" for i in range(agents))
        self.services = ServiceProxy(
            self.control_plane, self.network, hostname=self.agent_names[0] if agents else "", log=self.log
        )
        self.agent_args = tuple(agent_args)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_seconds = 0.0

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self) -> LocalCluster:
        problem = missing_privileges()
        if problem:
            raise StartError(f"the local cluster's pod network: {problem}")
        if self.agent_names and not agent_supports_pod_networks():
            raise StartError(
                "this checkout's node agent (`mljob node-agent`) cannot run pods in their own network namespaces "
                "yet (no --network namespaced); start without agents (--with dns) meanwhile"
            )
        started = time.monotonic()
        try:
            self.egress.start()
            self.control_plane.start()
            self.network.destroy()  # a cluster of the same name left by a killed run: a fresh one every time
            self.network.create()
            self.dns.start()
            for index, name in enumerate(self.agent_names):
                self._start_agent(index, name)
            for name in self.agent_names:
                self._wait_ready(name)
            if self.agent_names:  # kube-proxy waits up to 30 s for its Node to exist: once the agents' are there
                self.services.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.log(f"local cluster up in {self.startup_seconds:.1f} s")
        return self

    def _start_agent(self, index: int, name: str) -> None:
        cp = self.control_plane
        folder = self.workdir / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        pair = cp.kubelet_serving_pair(name)
        argv = [
            sys.executable, "-c", "from mljob.cli import main; main()", "node-agent",
            f"--kubeconfig={cp.kubeconfig}",
            f"--node={name}",
            "--node-ip=127.0.0.1",
            "--port=0",
            f"--state-dir={folder / 'state'}",
            f"--tls-cert-file={pair.cert}",
            f"--tls-private-key-file={pair.key}",
            f"--client-ca-file={cp.ca}",
            f"--pod-cidr={node_pod_cidr(index)}",
            "--network=namespaced",
            f"--cluster-netns={self.network.name}",
            *AGENT_CAPACITY,
            *self.agent_args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with open(cp.logs / f"agent-{name}.log", "ab") as out:
            self.agents[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def _wait_ready(self, name: str) -> None:
        cp = self.control_plane

        def ready() -> bool:
            proc = self.agents[name]
            if proc.poll() is not None:
                log = cp.component_log(f"agent-{name}")[-3000:]
                raise StartError(f"node agent {name} exited; its log ends:\n{log}")
            try:
                node = cp._request("GET", f"/api/v1/nodes/{name}")
            except OSError:
                return False
            conditions = (node.get("status") or {}).get("conditions") or ()
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        until(ready, 60.0, f"node {name} to be Ready", interval=0.2)

    def alive(self) -> dict[str, bool]:
        alive = {**self.control_plane.alive(), "coredns": self.dns.alive(), "kube-proxy": self.services.alive()}
        return alive | {f"agent {name}": proc.poll() is None for name, proc in self.agents.items()}

    def stop(self) -> None:
        """Agents first (each stops its pods and removes their namespaces), then DNS, the network, the control plane."""
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents.clear()
        self.services.stop()
        self.dns.stop()
        self.network.destroy()
        self.control_plane.stop()
        self.egress.stop()
