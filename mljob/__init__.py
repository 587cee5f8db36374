"""mljob: one Kubernetes operator, and one local runner, for distributed training in every framework.

The public contract for plugin authors is re-exported here, so a plugin imports only ``mljob``.
Every name is imported on first use: a training script's ``from mljob import progress`` needs only the standard
library (pydantic and pluggy are not imported), so it works in any framework's environment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "MLJob": "mljob.api",
    "RestartPolicy": "mljob.api",
    "Address": "mljob.framework",
    "Cluster": "mljob.framework",
    "Elastic": "mljob.framework",
    "Framework": "mljob.framework",
    "LocalWiring": "mljob.framework",
    "NoOptions": "mljob.framework",
    "Outcome": "mljob.framework",
    "Problem": "mljob.framework",
    "Replica": "mljob.framework",
    "Role": "mljob.framework",
    "hookimpl": "mljob.hookspecs",
    "Client": "mljob.client",
}

if TYPE_CHECKING:
    from mljob.api import MLJob, RestartPolicy
    from mljob.client import Client
    from mljob.framework import (
        Address,
        Cluster,
        Elastic,
        Framework,
        LocalWiring,
        NoOptions,
        Outcome,
        Problem,
        Replica,
        Role,
    )
    from mljob.hookspecs import hookimpl


def __getattr__(name: str) -> object:
    """The contract's names, imported when first asked for (``mljob.Client`` pulls in the client's dependencies)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mljob' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


__all__ = [
    "Address",
    "Client",
    "Cluster",
    "Elastic",
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
