"""Test infrastructure: an in-memory Kubernetes API server and a simulated kubelet.

Operators under test talk to :class:`KubeEmulator` over HTTP exactly as to a cluster; tests
inspect and drive the same state in-process, without polling and without a cluster.
"""

from mljob.testing.emulator import KubeEmulator, write_kubeconfig
from mljob.testing.errors import ApiError
from mljob.testing.faults import FaultRule, Faults, RequestStats
from mljob.testing.kubelet import Evict, Exit, Kubelet, LoseNode, RunForever, Unschedulable, fail, oom_killed, succeed
from mljob.testing.resources import ResourceInfo, crd_manifest
from mljob.testing.store import Store
from mljob.testing.threaded import EmulatorThread
from mljob.testing.watch import Change

__all__ = [
    "ApiError",
    "Change",
    "EmulatorThread",
    "Evict",
    "Exit",
    "FaultRule",
    "Faults",
    "KubeEmulator",
    "Kubelet",
    "LoseNode",
    "RequestStats",
    "ResourceInfo",
    "RunForever",
    "Store",
    "Unschedulable",
    "crd_manifest",
    "fail",
    "oom_killed",
    "succeed",
    "write_kubeconfig",
]
