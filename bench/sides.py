"""The four subjects of the head-to-head bench, each run on a control plane of its own.

* :class:`MLJobSide`: ``mljob operator --all-namespaces --standalone``, as deploy/ runs it (less the webhook).
* :class:`TrainingOperatorSide`: Kubeflow's training-operator v1.8.1, built from its module by `make controlplane`
  (controlplane/go/training-operator), out of cluster, at its default settings, with only PyTorchJobs enabled;
  its CRD comes from the module's manifests. It will not start without webhook certificates: an empty Secret
  ``kubeflow/training-operator-webhook-cert`` (which its certificate rotator fills) and a key pair in its fixed
  folder ``/tmp/k8s-webhook-server/serving-certs``. No webhook configuration points at it, as none points at mljob.
* :class:`MLJobPyTorchJobSide`: the same mljob operator serving Kubeflow's kind (``--kubeflow PyTorchJob``), with
  mljob's own PyTorchJob CRD (crds/kubeflow/) instead of training-operator's, given the very PyTorchJobs
  :class:`TrainingOperatorSide` is given: mljob and training-operator on the same objects.
* :class:`RawSide`: bench/raw.py, the least an operator could send: the same pods and service and the same status
  writes, through mljob's own client at the operator's concurrency, with nothing but two watches between.

Each authenticates as a user of its own, so the API server's audit log tells its requests apart.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from controlplane import ControlPlane
from controlplane.audit import AuditLog
from controlplane.pki import Authority
from mljob.core.crd import crd
from mljob.kube import Api, ApiError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGE = "busybox:1.36"
EXIT = "kwok.mljob.io/exit"
"""kwok's pod-run-end stage ends the pod's current run with this annotation (``CODE REASON RESTARTCOUNT``)."""
TO1_CERTS = Path("/tmp/k8s-webhook-server/serving-certs")
"""Fixed in training-operator v1.8.1 (pkg/cert/cert.go)."""


def _die_with_parent() -> None:
    """In the child, before exec: die with the bench, whatever killed it (as the control plane's processes do)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _template(container: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": container, "image": IMAGE}]}}


async def install_crd(api: Api, body: Mapping[str, Any]) -> None:
    """Create a CRD (server side, no client-side apply annotation: some are too large for it) and wait for it.

    Established is not enough: the API server may still answer a LIST of the new kind with 429 "storage is
    (re)initializing" for a second, and an operator started then spends it retrying, which would count as its own
    start-up. So the wait ends when a LIST is answered.
    """
    try:
        await api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
    except ApiError as error:
        if error.status != 409:
            raise
    name = body["metadata"]["name"]
    spec = body["spec"]
    served = next(v["name"] for v in spec["versions"] if v.get("served", True))
    listing = f"/apis/{spec['group']}/{served}/{spec['names']['plural']}?limit=1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = await api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = (found.get("status") or {}).get("conditions") or ()
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            try:
                await api.request("GET", listing)
                return
            except ApiError as error:
                if error.status not in (404, 429, 503):
                    raise
        await asyncio.sleep(0.1)
    raise TimeoutError(f"CRD {name} not established")


async def watching(
    audit: AuditLog, user: str, resources: Mapping[str, int], proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Until the audit log shows ``user``'s watches on ``resources`` (this many of each: the process is ready)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{user} exited ({proc.returncode}); its log ends:\n{log.read_text()[-3000:]}")
        open_ = Counter(r.resource for r in audit.requests(user=user) if r.verb == "watch")
        if all(open_[resource] >= count for resource, count in resources.items()):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{user} opened no watches on {sorted(resources)}; its log ends:\n{log.read_text()[-3000:]}")


class Side:
    """What differs between the subjects: the job's API, how its phase reads, how the operator starts."""

    name = ""
    user = ""
    container = "pytorch"
    resources: Mapping[str, int] = {}
    """The watches (resource: how many) that say the operator is ready."""
    restarts = False
    """Whether the restart scenario runs on this side's control plane after the main run."""

    def jobs_path(self, namespace: str) -> str:
        raise NotImplementedError

    def job(self, name: str, namespace: str, replicas: int) -> dict[str, Any]:
        raise NotImplementedError

    def phase(self, obj: Mapping[str, Any]) -> str:
        return str((obj.get("status") or {}).get("phase") or "")

    def replicas(self, obj: Mapping[str, Any]) -> int:
        specs = (obj.get("spec") or {}).get("replicaSpecs") or {}
        return sum(int(s.get("replicas") or 1) for s in specs.values())

    def cleaned(self, services: set[str]) -> bool:
        """Whether what the operator cleans up at the job's end (at its default policy) is gone."""
        return not services

    async def install(self, cp: ControlPlane, api: Api) -> None:
        await install_crd(api, crd())

    def command(self, cp: ControlPlane, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, cp: ControlPlane, kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
        args, env = self.command(cp, kubeconfig)
        with open(log, "ab") as out:
            return subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    async def ready(self, audit: AuditLog, proc: subprocess.Popen[bytes], log: Path) -> None:
        await watching(audit, self.user, self.resources, proc, log)


class MLJobSide(Side):
    name = "mljob"
    user = "bench-mljob"
    resources = {"mljobs": 1, "pods": 1, "services": 1}
    restarts = True

    def jobs_path(self, namespace: str) -> str:
        return f"/apis/mljob.io/v1alpha1/namespaces/{namespace}/mljobs"

    def job(self, name: str, namespace: str, replicas: int) -> dict[str, Any]:
        specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _template(self.container)}}
        if replicas > 1:
            specs["Worker"] = {"replicas": replicas - 1, "restartPolicy": "OnFailure", "template": _template("pytorch")}
        return {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"framework": "pytorch", "replicaSpecs": specs},
        }

    def command(self, cp: ControlPlane, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        args = [sys.executable, "-c", "from mljob.cli import main; main()", "operator", "--all-namespaces"]
        return [*args, "--standalone"], {**os.environ, "KUBECONFIG": str(kubeconfig)}


class RawSide(MLJobSide):
    name = "raw"
    user = "bench-raw"
    resources = {"mljobs": 1, "pods": 1}
    restarts = False

    def command(self, cp: ControlPlane, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, str(HERE / "raw.py")], {**os.environ, "KUBECONFIG": str(kubeconfig)}


class TrainingOperatorSide(Side):
    name = "training-operator"
    user = "bench-training-operator"
    resources = {"pytorchjobs": 1, "pods": 1, "services": 1}

    def jobs_path(self, namespace: str) -> str:
        return f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"

    def job(self, name: str, namespace: str, replicas: int) -> dict[str, Any]:
        specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _template(self.container)}}
        if replicas > 1:
            specs["Worker"] = {"replicas": replicas - 1, "restartPolicy": "OnFailure", "template": _template("pytorch")}
        return {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pytorchReplicaSpecs": specs},
        }

    def phase(self, obj: Mapping[str, Any]) -> str:
        """The type of the newest condition that holds (Created, Running, Restarting, Succeeded, Failed)."""
        conditions = (obj.get("status") or {}).get("conditions") or ()
        held = [c for c in conditions if c.get("status") == "True"]
        return str(held[-1].get("type")) if held else ""

    def replicas(self, obj: Mapping[str, Any]) -> int:
        specs = (obj.get("spec") or {}).get("pytorchReplicaSpecs") or {}
        return sum(int(s.get("replicas") or 1) for s in specs.values())

    def cleaned(self, services: set[str]) -> bool:
        return True  # cleanPodPolicy defaults to None for a PyTorchJob in v1.8.1: it deletes nothing

    async def install(self, cp: ControlPlane, api: Api) -> None:
        folder = cp.bin / "crds" / "training-operator"
        path = folder / "kubeflow.org_pytorchjobs.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no {path}: run `make controlplane` (it builds training-operator v1.8.1)")
        await install_crd(api, yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        await api.request("POST", "/api/v1/namespaces", {"metadata": {"name": "kubeflow"}})
        secret = {"metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}}
        await api.request("POST", "/api/v1/namespaces/kubeflow/secrets", secret)
        pair = Authority(cp.workdir / "to1-pki").issue("to1-webhook", "training-operator", server=True)
        TO1_CERTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.cert, TO1_CERTS / "tls.crt")
        shutil.copyfile(pair.key, TO1_CERTS / "tls.key")

    def command(self, cp: ControlPlane, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        binary = cp.bin / "training-operator"
        if not binary.exists():
            raise FileNotFoundError(f"no {binary}: run `make controlplane` (it builds training-operator v1.8.1)")
        args = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            "--enable-scheme=pytorchjob",
            # Loopback and free ports instead of :8080, :8081 and :9443, which other programs may hold.
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--webhook-server-port={free_port()}",
        ]
        return args, {**os.environ}


class MLJobPyTorchJobSide(TrainingOperatorSide):
    """mljob serving Kubeflow's PyTorchJob: training-operator's side's jobs, phase and replica count, mljob's process.

    The operator is the mljob side's command with ``--kubeflow PyTorchJob``; it serves MLJobs too (none are created),
    so both CRDs are installed: mljob's, and mljob's PyTorchJob CRD (crds/kubeflow/kubeflow.org_pytorchjobs.yaml,
    generated from its models), not training-operator's: each side has a control plane of its own, so the two
    definitions of ``pytorchjobs.kubeflow.org`` never meet. The status is Kubeflow's shape (conditions newest last),
    read as training-operator's is. The cleanup is Kubeflow's default for a PyTorchJob, cleanPodPolicy None, which
    mljob keeps for Kubeflow's kinds: nothing is deleted (:meth:`TrainingOperatorSide.cleaned`).
    """

    name = "mljob-pytorchjob"
    user = "bench-mljob-pytorchjob"
    # Two controllers (MLJob, PyTorchJob), each with its own watches of the pods and services it owns.
    resources = {"mljobs": 1, "pytorchjobs": 1, "pods": 2, "services": 2}
    restarts = True

    async def install(self, cp: ControlPlane, api: Api) -> None:
        await install_crd(api, crd())
        path = ROOT / "crds" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
        await install_crd(api, yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))

    def command(self, cp: ControlPlane, kubeconfig: Path) -> tuple[list[str], dict[str, str]]:
        args, env = MLJobSide().command(cp, kubeconfig)
        return [*args, "--kubeflow", "PyTorchJob"], env


SIDES: dict[str, type[Side]] = {
    "mljob": MLJobSide,
    "mljob-pytorchjob": MLJobPyTorchJobSide,
    "training-operator": TrainingOperatorSide,
    "raw": RawSide,
}
