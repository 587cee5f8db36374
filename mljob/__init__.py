"""mljob: one Kubernetes operator, and one local runner, for distributed training in every framework.

The public contract for plugin authors is re-exported here, so a plugin imports only ``mljob``.
"""

from mljob.api import MLJob, RestartPolicy
from mljob.framework import Address, Cluster, Framework, NoOptions, Outcome, Problem, Replica, Role
from mljob.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Cluster",
    "Framework",
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
