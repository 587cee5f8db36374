"""One row of facts per Kubeflow kind, from training-operator's Go constants and defaults.

Sources: the ``*_types.go`` constants (kind, plural, singular, replica types, default container, port name and
port, default restart policy) and ``*_defaults.go`` (``SetDefaults_<Kind>``: cleanPodPolicy None, replicas 1, the
restart policy, the named port added to the default container) of training-operator v1.9.3, and of v1.8.1 for
MXJob. Kubeflow's CRDs have no short names. PyTorchJob, JAXJob and PaddleJob have a ``scale`` subresource on their
Worker replicas (``+kubebuilder:subresource:scale``).

This is the package-local table of Kubeflow's kinds; :mod:`mljob.core.kinds` is another module.
"""

from __future__ import annotations

from dataclasses import dataclass

from mljob.core.kubeflow.api import API_VERSION, GROUP, VERSION, CleanPodPolicy, RestartPolicy

WORKER = "Worker"


@dataclass(frozen=True)
class KubeflowKind:
    """A Kubeflow kind and the facts mljob serves it with."""

    kind: str
    """``TFJob``."""
    plural: str
    """``tfjobs``: the resource, and the CRD's name before the group."""
    singular: str
    replica_specs_field: str
    """The JSON name of the spec's replica-specs map: ``tfReplicaSpecs``."""
    replica_types: tuple[str, ...]
    """The replica types Kubeflow defines for the kind, spelled and ordered as its constants."""
    container_name: str
    """The container that must be in every template and gets the wiring: ``tensorflow``."""
    port_name: str
    """The container port that carries the default port: ``tfjob-port``."""
    port: int
    restart_policy: RestartPolicy
    """The default restart policy of a replica spec that sets none."""
    framework: str
    """The mljob framework plugin the kind maps to (``spec.framework`` of the equivalent MLJob)."""
    short_names: tuple[str, ...] = ()
    scale: bool = False
    """Whether the CRD has a scale subresource (on the Worker replicas)."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.NONE
    """The default ``runPolicy.cleanPodPolicy`` (mljob's own MLJob default is Running)."""
    release: str = "v1.9.3"
    """The training-operator release whose Go types and CRD this kind follows."""

    group: str = GROUP
    version: str = VERSION

    @property
    def api_version(self) -> str:
        """``kubeflow.org/v1``."""
        return API_VERSION

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        """``tfjobs.kubeflow.org``."""
        return f"{self.plural}.{self.group}"


TFJOB = KubeflowKind(
    kind="TFJob",
    plural="tfjobs",
    singular="tfjob",
    replica_specs_field="tfReplicaSpecs",
    replica_types=("PS", WORKER, "Chief", "Master", "Evaluator"),
    container_name="tensorflow",
    port_name="tfjob-port",
    port=2222,
    restart_policy=RestartPolicy.NEVER,
    framework="tensorflow",
)
PYTORCHJOB = KubeflowKind(
    kind="PyTorchJob",
    plural="pytorchjobs",
    singular="pytorchjob",
    replica_specs_field="pytorchReplicaSpecs",
    replica_types=("Master", WORKER),
    container_name="pytorch",
    port_name="pytorchjob-port",
    port=23456,
    restart_policy=RestartPolicy.ON_FAILURE,
    framework="pytorch",
    scale=True,
)
MXJOB = KubeflowKind(
    kind="MXJob",
    plural="mxjobs",
    singular="mxjob",
    replica_specs_field="mxReplicaSpecs",
    replica_types=("Scheduler", "Server", WORKER, "TunerTracker", "TunerServer", "Tuner"),
    container_name="mxnet",
    port_name="mxjob-port",
    port=9091,
    restart_policy=RestartPolicy.NEVER,
    framework="mxnet",
    release="v1.8.1",
)
XGBOOSTJOB = KubeflowKind(
    kind="XGBoostJob",
    plural="xgboostjobs",
    singular="xgboostjob",
    replica_specs_field="xgbReplicaSpecs",
    replica_types=("Master", WORKER),
    container_name="xgboost",
    port_name="xgboostjob-port",
    port=9999,
    restart_policy=RestartPolicy.NEVER,
    framework="xgboost",
)
JAXJOB = KubeflowKind(
    kind="JAXJob",
    plural="jaxjobs",
    singular="jaxjob",
    replica_specs_field="jaxReplicaSpecs",
    replica_types=(WORKER,),
    container_name="jax",
    port_name="jaxjob-port",
    port=6666,
    restart_policy=RestartPolicy.NEVER,
    framework="jax",
    scale=True,
)
PADDLEJOB = KubeflowKind(
    kind="PaddleJob",
    plural="paddlejobs",
    singular="paddlejob",
    replica_specs_field="paddleReplicaSpecs",
    replica_types=("Master", WORKER),
    container_name="paddle",
    port_name="master",
    port=36543,
    restart_policy=RestartPolicy.ON_FAILURE,
    framework="paddle",
    scale=True,
)

KINDS: dict[str, KubeflowKind] = {k.kind: k for k in (TFJOB, PYTORCHJOB, MXJOB, XGBOOSTJOB, JAXJOB, PADDLEJOB)}
"""Kind -> its facts, in Kubeflow's documentation order."""
BY_PLURAL: dict[str, KubeflowKind] = {k.plural: k for k in KINDS.values()}
"""Plural (the resource) -> its facts."""

MPIJOB = KubeflowKind(
    kind="MPIJob",
    plural="mpijobs",
    singular="mpijob",
    replica_specs_field="mpiReplicaSpecs",
    replica_types=("Launcher", WORKER),
    container_name="mpi",
    port_name="mpi-port",
    port=9999,
    restart_policy=RestartPolicy.NEVER,
    framework="mpi",
    release="v1.8.1",
)
"""training-operator v1.8.1's ``kubeflow.org/v1`` MPIJob, which is also the MPI Operator v0.8.0's ``v2beta1`` MPIJob
(one CRD, two versions: :mod:`.mpijob`). Not in :data:`KINDS`: its CRD, admission and conversion are its own."""
