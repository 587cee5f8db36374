"""A real Kubernetes control plane for tests and for trying the operator with no cluster.

Built from pinned Go modules (``make controlplane``), started on loopback by :class:`ControlPlane`; see
cluster.py. ``python -m controlplane`` (``make cluster``) starts one for a person and prints its KUBECONFIG.
"""

from controlplane.cluster import DEFAULT_NODES, ControlPlane, Node, StartError

__all__ = ["DEFAULT_NODES", "ControlPlane", "Node", "StartError"]
