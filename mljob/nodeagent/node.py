"""A Node as a kubelet registers and heartbeats it: the objects, as pure functions of the agent's settings.

The kubelet creates its Node with the full status (capacity, addresses, the kubelet endpoint the API server dials
for logs, the Ready condition), then proves it is alive two ways: its Lease in ``kube-node-lease`` is renewed
every 10 s (a quarter of its 40 s duration), which is what the node lifecycle controller reads first, and the
Ready condition's ``lastHeartbeatTime`` is refreshed less often. Both bodies are built here; the agent sends them.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mljob import __version__
from mljob.api import format_time

LEASE_NAMESPACE = "kube-node-lease"
RUNTIME = f"mljob-node-agent://{__version__}"
KUBELET_VERSION = f"v{__version__}-mljob"


@dataclass(frozen=True)
class NodeSpec:
    """One Node the agent registers and runs pods for."""

    name: str
    ip: str
    port: int
    cpu: str = "4"
    memory: str = "8Gi"
    pods: str = "110"
    labels: Mapping[str, str] = field(default_factory=dict)
    pod_cidr: str | None = None
    taints: Sequence[Mapping[str, str]] = ()


def micro_time(now: datetime) -> str:
    """A MicroTime (a Lease's renewTime): RFC 3339 with microseconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_conditions(now: datetime, since: datetime) -> list[dict[str, Any]]:
    """Ready, and no pressure of any kind: the agent does not measure any, and says so in the message."""
    stamp, moved = format_time(now), format_time(since)

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": moved,
        }

    return [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "not measured by the mljob node agent"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "not measured by the mljob node agent"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "not measured by the mljob node agent"),
        condition("Ready", "True", "KubeletReady", "mljob node agent is posting ready status"),
    ]


def node_status(spec: NodeSpec, now: datetime, since: datetime) -> dict[str, Any]:
    capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods, "ephemeral-storage": "100Gi"}
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": node_conditions(now, since),
        "addresses": [{"type": "InternalIP", "address": spec.ip}, {"type": "Hostname", "address": spec.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": spec.port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "host processes (mljob node agent: images are not run)",
            "containerRuntimeVersion": RUNTIME,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
        },
    }


def node_body(spec: NodeSpec, now: datetime) -> dict[str, Any]:
    """The Node to create: labels as a kubelet sets them, the pod CIDR, and its whole status."""
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": node_status(spec, now, now)["nodeInfo"]["architecture"],
        "node.mljob.io/agent": "true",
        **spec.labels,
    }
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {},
        "status": node_status(spec, now, now),
    }
    if spec.pod_cidr:
        body["spec"] = {"podCIDR": spec.pod_cidr, "podCIDRs": [spec.pod_cidr]}
    if spec.taints:
        body["spec"]["taints"] = [dict(t) for t in spec.taints]
    return body


def lease_body(node: str, node_uid: str, duration: int, now: datetime) -> dict[str, Any]:
    """The node's Lease, owned by its Node (so it goes with it), renewed at ``now``."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
        },
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": micro_time(now)},
    }
