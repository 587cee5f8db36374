"""TODO: MyFramework for mljob — say which variables it wires and where their format comes from.

A skeleton to copy: it works as it stands (one Worker role, worker 0 coordinates), so its tests
pass from the first minute; replace each TODO with your framework's facts.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from mljob import Cluster, Framework, MLJob, Problem, Replica, RestartPolicy, Role, hookimpl

__all__ = ["MyFramework", "MyFrameworkOptions", "mljob_register_frameworks"]


def _version() -> str:
    """The installed distribution's version, shown by ``mljob plugins``."""
    try:
        return importlib.metadata.version("mljob-myframework")  # TODO: your distribution name
    except importlib.metadata.PackageNotFoundError:
        return "0"


class MyFrameworkOptions(BaseModel):
    """``spec.frameworkOptions``. ``extra="forbid"`` turns a typo into a validation error.

    TODO: your options, each with a camelCase alias and a description; or use ``mljob.NoOptions``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    init_timeout_seconds: int = Field(300, alias="initTimeoutSeconds", gt=0, description="How long workers wait.")


class MyFramework(Framework):
    """TODO: the roles, and how their replicas find each other."""

    name = "myframework"  # TODO: what users write in spec.framework
    roles = (
        # TODO: one Role per replica type. leader: index 0 coordinates. runs_until_stopped: a role
        # that never exits on its own (a parameter server). in_cluster=False: not a peer.
        Role("Worker", default_port=29400, leader=True, min_replicas=1),
    )
    default_restart_policy = RestartPolicy.ON_FAILURE  # TODO: what a replica spec gets by default
    options_model = MyFrameworkOptions
    reserved_env = frozenset({"MYFW_COORDINATOR", "MYFW_NUM_PROCESSES", "MYFW_PROCESS_ID", "MYFW_INIT_TIMEOUT"})
    port_name = "myfw-port"  # TODO: a container port with this name overrides the default port
    version = _version()

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """TODO: rules that role bounds and the options model cannot say, with field paths."""
        return ()

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        """TODO: your variables. Every address comes from ``cluster``; every name is in reserved_env."""
        options = MyFrameworkOptions.model_validate(job.spec.framework_options)
        return {
            "MYFW_COORDINATOR": str(cluster.address(Replica("Worker", 0))),
            "MYFW_NUM_PROCESSES": str(job.spec.replica_specs["Worker"].replicas),
            "MYFW_PROCESS_ID": str(replica.index),
            "MYFW_INIT_TIMEOUT": str(options.init_timeout_seconds),
        }

    # TODO: override succeeded(job, outcomes) unless "every replica of every role that does not
    # run until stopped succeeded" is your framework's rule; is_leader(job, replica) likewise.


@hookimpl
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Hand the framework to mljob; called once when plugins load."""
    register(MyFramework())
