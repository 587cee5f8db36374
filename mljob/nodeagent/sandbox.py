"""Where a pod's processes run: the seam between the node agent's pod lifecycle and the host's namespaces.

The agent (mljob.nodeagent.agent) decides *when* a pod's containers start, restart and stop; a
:class:`PodNetwork` decides *where*: it gives each pod an IP and a command prefix that enters the pod's own
namespaces (network, mount, UTS) with its hostname, /etc/hosts and resolv.conf. Two implementations:

* ``HostNetwork``: no isolation, every pod gets the node's IP (for a machine without root, and for the agent's
  lifecycle tests, which need no network);
* ``NamespacedNetwork`` (mljob.nodeagent.network): a network namespace per pod on a bridge inside the local
  cluster's private namespace, as docs/node-agent.md describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PodIdentity:
    """What a sandbox needs to know of a pod (from its spec and metadata)."""

    uid: str
    name: str
    namespace: str
    hostname: str  # spec.hostname or the pod's name
    subdomain: str | None = None  # spec.subdomain: the headless Service that names the pod in DNS
    host_network: bool = False


@dataclass(frozen=True)
class Sandbox:
    """A pod's place to run: its IP and the argv prefix that runs a command inside it."""

    ip: str
    prefix: Sequence[str] = field(default_factory=tuple)  # e.g. ("nsenter", "--net=...", "unshare", ...); () = host


class PodNetwork(Protocol):
    """Creates and removes pods' sandboxes; both idempotent (the agent calls them again after a restart)."""

    def create(self, pod: PodIdentity) -> Sandbox: ...

    def remove(self, pod: PodIdentity) -> None: ...

    def sandboxes(self) -> set[str]:
        """The uids of this node's pods that have a sandbox, so a restarted agent can remove the orphans'."""
        ...

    def remove_uid(self, uid: str) -> None:
        """remove() for a pod known only by its uid (one deleted while the agent was away)."""
        ...


class HostNetwork:
    """Every pod on the host's network with the node's IP: no root needed, no isolation (ports are shared)."""

    def __init__(self, node_ip: str) -> None:
        self.node_ip = node_ip

    def create(self, pod: PodIdentity) -> Sandbox:
        return Sandbox(ip=self.node_ip)

    def remove(self, pod: PodIdentity) -> None:
        return None

    def sandboxes(self) -> set[str]:
        return set()

    def remove_uid(self, uid: str) -> None:
        return None
