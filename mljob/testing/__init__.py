"""Test infrastructure: an in-memory Kubernetes API server and a simulated kubelet.

Operators under test talk to :class:`KubeEmulator` over HTTP exactly as to a cluster; tests
inspect and drive the same state in-process, without polling and without a cluster::

    async with KubeEmulator() as emu, Kubelet(emu, default=succeed(after=0.1)) as kubelet:
        emu.create("customresourcedefinitions", crd_manifest("example.com", "widgets", "Widget"))
        env = {**os.environ, "KUBECONFIG": str(emu.kubeconfig(tmp_path / "kubeconfig"))}
        ...  # start the operator (a subprocess, or in-process)
        kubelet.script("job-worker-*", fail(code=1), succeed())
        emu.faults.error_rate("patch", 0.05, codes=(500, 409, 429))
        await emu.wait_for(lambda: emu.get("widgets", "w1")["status"].get("phase") == "Done", timeout=10)
        assert emu.stats.total("create", "pods") == 2

Sync tests (or tests whose loop must stay free) use ``with EmulatorThread() as emu:`` instead.
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
