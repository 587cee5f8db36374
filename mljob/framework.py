"""The framework contract: what a framework plugin hands to the core.

A framework plugin registers one or more :class:`Framework` objects through the
``mljob_register_frameworks`` hook (see :mod:`mljob.hookspecs`). All behaviour lives on the
object, so calling it for one job never runs another framework's code, and every method is a
pure function of its arguments: a framework never talks to the API server or spawns a process.

The same object serves the operator (addresses are DNS names of the headless service) and the
local runtime (addresses are 127.0.0.1 and free ports): the :class:`Cluster` passed to
:meth:`Framework.env` is the ONLY source of addresses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from mljob.api import RestartPolicy

if TYPE_CHECKING:
    from mljob.api import MLJob


@dataclass(frozen=True, order=True)
class Replica:
    """One replica of a job: its role (as spelled in ``replicaSpecs``) and its index."""

    role: str
    index: int

    def __str__(self) -> str:
        return f"{self.role.lower()}-{self.index}"


class Address(NamedTuple):
    """Where a replica listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Cluster(Protocol):
    """Answers "where does replica R listen"; the only source of addresses for a framework."""

    def address(self, replica: Replica) -> Address:
        """The address of ``replica``; raises ``KeyError`` for a replica the job does not have."""
        ...


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: the field path (``spec.replicaSpecs.Worker.replicas``) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Outcome(StrEnum):
    """How a replica stands, as the success rule sees it."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Role:
    """A role a framework understands, with the facts the core needs to run it."""

    name: str
    default_port: int
    leader: bool = False
    """Index 0 of this role coordinates (the default :meth:`Framework.is_leader`)."""
    min_replicas: int = 0
    max_replicas: int | None = None
    runs_until_stopped: bool = False
    """Never exits on its own (TF PS, MXNet scheduler/server): stopped when the job succeeds."""
    in_cluster: bool = True
    """Whether the role's replicas are addressable peers (a TF evaluator is not)."""


@dataclass(frozen=True)
class LocalWiring:
    """How one replica runs under ``mljob run`` where that differs from its pod.

    The default changes nothing. A framework whose cluster wiring cannot work on one machine says
    here what to do instead, as data: an MPI worker, which only runs sshd for the launcher's
    ``mpirun`` in a cluster, is not started (``mpirun`` starts every rank locally), and the
    launcher's hostfile is a file of the run rather than a ConfigMap mount.
    """

    run: bool = True
    """Whether the replica is started at all; one that is not is left out of the run and its table."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables that replace (or add to) :meth:`Framework.env`'s for the local process."""
    files: Mapping[str, str] = field(default_factory=dict)
    """File name -> content, written into the run's folder before any replica starts."""


@dataclass(frozen=True)
class Elastic:
    """A job whose ``role`` may grow and shrink within ``[min_replicas, max_replicas]`` while it runs (torchrun's
    elastic agent): a lost replica of that role is not the job's failure while at least ``min_replicas`` run, and
    its replica count may change without a restart of the others (``kubectl scale``)."""

    role: str
    min_replicas: int
    max_replicas: int


class NoOptions(BaseModel):
    """The options model of a framework that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Framework:
    """Base class for a framework. Subclass it, set the class attributes, implement :meth:`env`.

    Defaults cover the common case: the wiring container is the one named after the framework,
    or the only container; the job succeeds when every replica of every role that does not run
    until stopped has succeeded.
    """

    name: ClassVar[str]
    """The value of ``spec.framework`` that selects this framework."""
    roles: ClassVar[tuple[Role, ...]]
    default_restart_policy: ClassVar[RestartPolicy] = RestartPolicy.ON_FAILURE
    options_model: ClassVar[type[BaseModel]] = NoOptions
    """Pydantic model for ``spec.frameworkOptions``; use ``extra="forbid"`` to catch typos."""
    reserved_env: ClassVar[frozenset[str]] = frozenset()
    """Variables the framework wires; a user who sets one gets a validation error."""
    port_name: ClassVar[str | None] = None
    """A container port with this name overrides the role's default port (Kubeflow's ``tfjob-port``)."""
    version: str = "0"
    """Version of the package that ships the framework, shown by ``mljob plugins``."""

    @property
    def container_name(self) -> str:
        """The container that gets the wiring when a pod has more than one."""
        return self.name

    def role(self, name: str) -> Role | None:
        """The role called ``name`` exactly, or None."""
        for role in self.roles:
            if role.name == name:
                return role
        return None

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        """Whether ``replica`` coordinates the job (it gets the ``mljob.io/leader`` label).

        Override when the coordinator depends on the job's shape, e.g. worker 0 leads only
        when the job has no master.
        """
        role = self.role(replica.role)
        return role is not None and role.leader and replica.index == 0

    def options(self, job: MLJob) -> BaseModel:
        """``spec.frameworkOptions`` parsed by :attr:`options_model` (validation has already passed)."""
        return self.options_model.model_validate(job.spec.framework_options)

    def validate(self, job: MLJob) -> Sequence[Problem]:
        """Framework-specific problems beyond role names and replica bounds, which the core checks."""
        return ()

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        """The variables that wire ``replica`` to its peers; every address comes from ``cluster``."""
        raise NotImplementedError

    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        """How ``replica`` runs under ``mljob run``, where that differs from its pod (default: as in a pod).

        ``folder`` is a folder of the run that :attr:`LocalWiring.files` are written into, so
        ``env`` may name them. Called after :meth:`env`, only by the local runtime; like every
        method, a pure function of its arguments (it returns files, it does not write them).
        """
        return LocalWiring()

    def objects(self, job: MLJob, cluster: Cluster) -> Sequence[Mapping[str, Any]]:
        """Per-job ConfigMaps and Secrets the job's pods mount (an MPI job's hostfile and SSH keys); default none.

        Each is created in the job's namespace before any of its pods, once (an existing one is kept: a key
        generated here is generated once per spec generation, and the first one created stays; a Secret that
        exists is used as it is, since the operator may not read Secrets), labelled and owned by the job, so it is
        deleted with it. Return ``apiVersion: v1`` objects of kind ``ConfigMap`` or
        ``Secret`` whose ``metadata.name`` starts with the job's name; the core sets their namespace, labels and
        owner. The pods mount them by name (a ``mljob_mutate_pod`` hook adds the volumes). Not called by the
        local runtime (see :meth:`local_wiring`).
        """
        return ()

    def starts_after(self, job: MLJob, replica: Replica) -> tuple[str, ...]:
        """Roles every pod of which must be Ready before ``replica``'s pod is created; default none (all at once).

        The MPI Operator's ``launcherCreationPolicy: WaitForWorkersReady`` holds the launcher until every worker is
        ready. The operator creates the others first, says in the job's message what it waits for, and creates the
        held pod in the pass that sees the last one Ready. Not used by the local runtime.
        """
        return ()

    def elastic(self, job: MLJob) -> Elastic | None:
        """Whether ``job`` is elastic, and in which role and bounds; default never (every replica is needed).

        An elastic job's :meth:`env` must not depend on that role's replica count: its pods keep running when the
        count changes (the operator leaves the count out of the pods' spec fingerprint)."""
        return None

    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        """The framework's success rule over every replica of the job."""
        finishing = [r for r in outcomes if not self._runs_until_stopped(r.role)]
        return bool(finishing) and all(outcomes[r] is Outcome.SUCCEEDED for r in finishing)

    def _runs_until_stopped(self, role_name: str) -> bool:
        role = self.role(role_name)
        return role is not None and role.runs_until_stopped


def replicas_of(job: MLJob) -> list[Replica]:
    """Every replica of the job, in ``replicaSpecs`` order then by index."""
    return [Replica(role, index) for role, spec in job.spec.replica_specs.items() for index in range(spec.replicas)]


def roles_by_name(framework: Framework) -> dict[str, Role]:
    return {role.name: role for role in framework.roles}


@dataclass
class Registry:
    """The frameworks a plugin manager collected; rejects a name registered twice."""

    frameworks: dict[str, Framework] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def register(self, framework: Framework, source: str = "") -> None:
        if framework.name in self.frameworks:
            raise ValueError(
                f"framework {framework.name!r} is registered twice "
                f"(by {self.sources[framework.name] or 'a plugin'} and by {source or 'a plugin'})"
            )
        self.frameworks[framework.name] = framework
        self.sources[framework.name] = source


def describe(value: Any) -> str:
    """A short, quoted rendering of a user value for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
