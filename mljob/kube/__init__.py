"""mljob's Kubernetes API client, shared by the operator, the node agent and the web UI.

:mod:`~mljob.kube.credentials` finds the API server and how to authenticate, :mod:`~mljob.kube.api` makes the
requests over one aiohttp session, :mod:`~mljob.kube.listwatch` lists then watches. Import from here.
"""

from mljob.kube.api import (
    COMPONENT,
    CONCURRENCY,
    CORE,
    PLURALS,
    Api,
    ApiError,
    Gone,
    core_path,
    job_path,
    object_path,
    user_agent,
)
from mljob.kube.credentials import SERVICE_ACCOUNT, Credentials
from mljob.kube.listwatch import SYNC, Keep, inform, list_all

__all__ = [
    "COMPONENT",
    "CONCURRENCY",
    "CORE",
    "PLURALS",
    "SERVICE_ACCOUNT",
    "SYNC",
    "Api",
    "ApiError",
    "Credentials",
    "Gone",
    "Keep",
    "core_path",
    "inform",
    "job_path",
    "list_all",
    "object_path",
    "user_agent",
]
