"""mljob: one Kubernetes operator, and one local runner, for distributed training in every framework.

The public contract for plugin authors is re-exported here, so a plugin imports only ``mljob``.
"""

from mljob.api import MLJob, RestartPolicy
from mljob.framework import Address, Cluster, Framework, LocalWiring, NoOptions, Outcome, Problem, Replica, Role
from mljob.hookspecs import hookimpl

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``mljob.Client`` is imported on first use: plugins and ``mljob run`` never pay for it."""
    if name == "Client":
        from mljob.client import Client

        return Client
    raise AttributeError(f"module 'mljob' has no attribute {name!r}")


__all__ = [
    "Address",
    "Client",
    "Cluster",
    "Framework",
    "LocalWiring",
    "MLJob",
    "NoOptions",
    "Outcome",
    "Problem",
    "Replica",
    "RestartPolicy",
    "Role",
    "__version__",
    "hookimpl",
]
