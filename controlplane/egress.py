"""The API server's way into the pods' network: an HTTP CONNECT proxy on a unix socket, named by the API server's
egress selector for its ``cluster`` traffic.

On a cluster the API server reaches Services, pods and kubelets through the node network (or through konnectivity,
when the control plane is elsewhere). Here it stays on the host's 127.0.0.1 while pods and ClusterIPs live in the
cluster's private network namespace (mljob.nodeagent.network), so an admission webhook served by a pod, the operator
run by deploy/ among them, would be out of its reach. Kubernetes' own answer for an API server that cannot route to
the cluster is the egress selector (``--egress-selector-config-file``): its ``cluster`` traffic (webhooks, aggregated
APIs, kubelets) goes through a proxy, here over ``HTTPConnect`` on a unix socket. For each ``CONNECT host:port``
this proxy dials from where that address is: inside the cluster namespace for the pods' range and the Service range
(a ClusterIP is then DNATed by kube-proxy there, as on a node), from the host for the rest (the agents' and kwok's
kubelet endpoints on 127.0.0.1). Then it pipes bytes both ways; TLS runs end to end between the API server and the
webhook or kubelet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path

import yaml

from controlplane.clusterdns import Relay
from mljob.nodeagent.network import ClusterNetwork

HEAD_LIMIT = 8192


def egress_config(socket_path: Path) -> dict[str, object]:
    """The API server's EgressSelectorConfiguration: its ``cluster`` traffic through the proxy's socket."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {"proxyProtocol": "HTTPConnect", "transport": {"uds": {"udsName": str(socket_path)}}},
            }
        ],
    }


def connect_target(head: bytes) -> tuple[str, int]:
    """The ``host:port`` of a CONNECT request's head; ValueError for anything else."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(line) != 3 or line[0] != "CONNECT":
        raise ValueError(f"not a CONNECT request: {line!r}")
    host, _, port = line[1].rpartition(":")
    return host.strip("[]"), int(port)


class EgressProxy(Relay):
    """Serves CONNECT on ``socket_path``; ``inside`` lists the ranges dialed from ``network``'s namespace."""

    def __init__(self, socket_path: Path, network: ClusterNetwork, inside: Sequence[str]) -> None:
        socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(64)
        super().__init__(listener, ("", 0))
        self.path = socket_path
        self.network = network
        self.inside = [ipaddress.ip_network(cidr) for cidr in inside]

    def write_config(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(egress_config(self.path), sort_keys=False))
        return path

    def stop(self) -> None:
        super().stop()
        self.path.unlink(missing_ok=True)

    def _dial(self, host: str, port: int) -> socket.socket:
        address = ipaddress.ip_address(socket.gethostbyname(host))
        if any(address in net for net in self.inside) and self.network.exists():
            sock = self.network.socket()
            sock.settimeout(10)
            sock.connect((str(address), port))
        else:
            sock = socket.create_connection((str(address), port), timeout=10)
        sock.settimeout(None)
        return sock

    def _connect(self, client: socket.socket) -> socket.socket | None:
        """Read the CONNECT request, dial its target from where it is, answer 200 (or 502 with why)."""
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = client.recv(1024)
                if not chunk or len(head) > HEAD_LIMIT:
                    raise ValueError("the request head ended early")
                head += chunk
            upstream = self._dial(*connect_target(head))
        except (OSError, ValueError) as error:
            with contextlib.suppress(OSError):
                client.sendall(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{error}".encode())
            return None
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:  # the client spoke before our answer: pass it on
            upstream.sendall(rest)
        return upstream
