"""ClusterIP Services for the node agent's pods: the real kube-proxy in the cluster's network namespace, and the
``kubernetes`` Service's endpoint, a relay to the API server.

The pods' network (mljob.nodeagent.network) is one bridge in a private namespace, the "node's" network, shared by
every agent Node. kube-proxy (built from the control plane's own Kubernetes module, ``cmd/kube-proxy``) runs there,
in nftables mode, as it runs in a node's network namespace: it watches Services and EndpointSlices and programs
the namespace's netfilter so that a pod's connection to a ClusterIP and port is DNATed to one ready endpoint. Two
settings of the namespace make that work for traffic that never leaves the bridge (ClusterNetwork.create): IPv4
forwarding (a ClusterIP is not on the bridge, so the pod sends to its gateway, and the namespace forwards the
DNATed packet back onto the bridge), and ``bridge-nf-call-iptables`` (the backend's reply to a pod on the same
bridge is bridged, not routed; the bridge must show it to conntrack to be un-NATed).

The API server stays on the host's 127.0.0.1 (controlplane/clusterdns.py says why). Pods reach it as in a cluster,
at ``kubernetes.default.svc`` (the Service's ClusterIP, 10.0.0.1:443): its endpoint is the gateway's address,
10.244.0.1:6443, where a relay socket made inside the cluster namespace pipes each connection to the API server on
the host. The control plane runs with ``--endpoint-reconciler-type=none``, so the API server writes no endpoint of
its own; this module writes the ``default/kubernetes`` Endpoints, and the controller-manager's EndpointSlice
mirroring controller makes the EndpointSlice kube-proxy reads, as it does for any Service without a selector. TLS
runs end to end: the API server's certificate names 10.0.0.1, ``kubernetes.default.svc`` and 10.244.0.1.

kube-proxy itself reads the API server through the same relay (its kubeconfig names https://10.244.0.1:6443).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from controlplane.cluster import BIN, SERVICE_CIDR, ControlPlane
from controlplane.clusterdns import NetnsServer, Relay
from mljob.nodeagent.network import BRIDGE, CLUSTER_CIDR, ClusterNetwork

API_PORT = 6443
"""The ``kubernetes`` Service's endpoint port on the gateway's address (the Service's own port is 443)."""
HEALTHZ_PORT = 10256
"""kube-proxy's health server, on 127.0.0.1 of the cluster namespace: /livez is 200 once its rules are in
(/healthz also asks whether this Node may take load-balancer traffic, which is not the question here)."""
METRICS_PORT = 10249


def proxy_config(*, kubeconfig: Path, hostname: str, mode: str = "nftables") -> dict[str, object]:
    """kube-proxy's KubeProxyConfiguration for the cluster namespace.

    ``conntrack`` limits are global sysctls shared with the host: left alone (0 = do not set). Servers bind to the
    namespace's own 127.0.0.1, out of the pods' way.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 50, "burst": 100},
        "mode": mode,
        "clusterCIDR": CLUSTER_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "hostnameOverride": hostname,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": f"127.0.0.1:{HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{METRICS_PORT}",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "syncPeriod": "30s",
        "minSyncPeriod": "0s",
    }


def kubernetes_endpoints(address: str, port: int = API_PORT) -> dict[str, object]:
    """The ``default/kubernetes`` Endpoints: the API server as pods reach it (mirrored into an EndpointSlice)."""
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }


class ServiceProxy(NetnsServer):
    """kube-proxy for ``network`` and the API server's relay; ``start()`` returns once kube-proxy is healthy."""

    component = "kube-proxy"

    def __init__(
        self,
        control_plane: ControlPlane,
        network: ClusterNetwork,
        *,
        hostname: str,
        bin_dir: Path = BIN,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(control_plane, network, bin_dir=bin_dir, log=log)
        self.hostname = hostname

    @property
    def api_address(self) -> tuple[str, int]:
        """Where the API server is inside the cluster namespace (the ``kubernetes`` Service's endpoint)."""
        return (self.network.gateway, API_PORT)

    def start(self) -> ServiceProxy:
        binary = self._binary()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = self.network.socket()
        listener.bind(self.api_address)
        listener.listen(64)
        self.relay = Relay(listener, ("127.0.0.1", self.control_plane.port)).start()
        # A connection made in the cluster namespace itself (a socket the agent or the relay makes there) is routed
        # before kube-proxy's output rules see it: the Service range needs a route, or connect() fails at once.
        subprocess.run(
            ["ip", "-n", self.network.name, "route", "replace", SERVICE_CIDR, "dev", BRIDGE], check=True,
            capture_output=True,
        )  # fmt: skip
        cp = self.control_plane
        endpoints = kubernetes_endpoints(self.network.gateway)
        cp._request("PUT", "/api/v1/namespaces/default/endpoints/kubernetes", endpoints)
        host, port = self.api_address
        kubeconfig = self._kubeconfig("system:kube-proxy", ("system:node-proxier",), f"https://{host}:{port}")
        conf = self.workdir / "config.yaml"
        conf.write_text(yaml.safe_dump(proxy_config(kubeconfig=kubeconfig, hostname=self.hostname), sort_keys=False))
        self._spawn([str(binary), f"--config={conf}", "--v=1"])
        try:
            self._wait_http(HEALTHZ_PORT, "/livez", timeout=60.0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.log(f"kube-proxy ready in {self.startup_seconds:.1f} s in netns {self.network.name}")
        return self
