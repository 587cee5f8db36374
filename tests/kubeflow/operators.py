"""The operators Kubeflow's own end-to-end suite (suite.py) runs against, each pluggable by name (:data:`OPERATORS`).

A starter is a context manager: on a running :class:`ControlPlane` it installs the CRDs of the kinds it serves,
starts the operator for one namespace (plain, or gang with scheduler-plugins), returns once the operator watches
its kinds (the API server's audit log shows its watches, under a user of its own), yields the operator's log file,
and stops the operator on the way out.

    with OPERATORS["training-operator"](cp, namespace="kubeflow-e2e", gang=False, workdir=tmp) as log:
        suite.run(cp, "1.9.4", gang=False, workdir=tmp / "1.9.4")

* :func:`training_operator`: Kubeflow's training-operator v1.8.1, built by ``make controlplane``, out of cluster as
  bench/headtohead.py runs it, with every kind enabled (its default) and its six CRDs from its module.
* :func:`mljob`: ``python -m mljob.operator --kubeflow all``, with mljob's own CRDs for the kinds (crds/kubeflow/)
  and its admission webhook (Kubeflow's rules, e.g. ``runPolicy.managedBy``), registered by the operator itself,
  which also converts MPIJob between the suite's v1 and the stored v2beta1.

Gang runs need scheduler-plugins' scheduler and its PodGroup CRD on the control plane first
(:meth:`ControlPlane.start_coscheduler`): training-operator refuses to start with ``--gang-scheduler-name`` when the
PodGroup kind is not served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from controlplane import ControlPlane
from controlplane.audit import AuditLog
from controlplane.cluster import StartError, free_port
from controlplane.pki import Authority
from controlplane.process import LoggedProcess
from controlplane.waiting import until

ROOT = Path(__file__).resolve().parents[2]
Starter = Callable[..., AbstractContextManager[Path]]
"""``starter(cp, *, namespace, gang, workdir)``: the operator running for ``namespace`` inside the block."""

JOB_PLURALS = ("tfjobs", "pytorchjobs", "mxjobs", "xgboostjobs", "paddlejobs")
"""The kinds both operators serve; training-operator v1.8.1 adds mpijobs, mljob jaxjobs."""
TO1_GANG_SCHEDULER = "scheduler-plugins"
"""training-operator's --gang-scheduler-name for scheduler-plugins (any name but volcano means it)."""
TO1_CERTS = Path("/tmp/k8s-webhook-server/serving-certs")
"""Fixed in training-operator v1.8.1 (pkg/cert/cert.go): it will not start without a key pair there."""
TO1_NAMESPACE = "kubeflow"
"""Where training-operator v1.8.1 keeps its webhook Secret (KUBEFLOW_NAMESPACE's default)."""
READY_TIMEOUT = 120.0


class OperatorProcess(LoggedProcess):
    """An operator's process, its output appended to its log; dies with us (a parent-death signal)."""

    def start(self, args: list[str], env: dict[str, str] | None = None) -> OperatorProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        return self


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _create(cp: ControlPlane, *args: str) -> None:
    """``kubectl create ...``, where an object already there is as good."""
    try:
        cp.kubectl("create", *args)
    except StartError as error:
        if "already exists" not in str(error).lower().replace("alreadyexists", "already exists"):
            raise


def watching(cp: ControlPlane, user: str, resources: set[str], process: OperatorProcess, since: int = 0) -> None:
    """Until the audit log shows ``user``'s watches on every one of ``resources`` (so it sees every event after)."""
    audit = AuditLog(cp.audit_log)
    deadline = time.monotonic() + READY_TIMEOUT
    opened: set[str] = set()
    while time.monotonic() < deadline:
        if process.proc is None or process.proc.poll() is not None:
            raise StartError(f"{user} exited; its log ends:\n{process.log()[-3000:]}")
        opened = {r.resource for r in audit.requests(since, user=user) if r.verb == "watch"}
        if resources <= opened:
            return
        time.sleep(0.2)
    missing = sorted(resources - opened)
    raise StartError(
        f"{user} opened no watch on {missing} in {READY_TIMEOUT:g} s; its log ends:\n{process.log()[-3000:]}"
    )


@contextlib.contextmanager
def _running(process: OperatorProcess) -> Iterator[Path]:
    try:
        yield process.log_path
    finally:
        process.stop()


@contextlib.contextmanager
def training_operator(cp: ControlPlane, *, namespace: str, gang: bool, workdir: Path) -> Iterator[Path]:
    """Kubeflow's training-operator v1.8.1 for ``namespace`` (``--namespace``), gang with scheduler-plugins or not.

    What it needs out of cluster: its CRDs (created server side: too large for a client-side apply), an empty
    Secret ``kubeflow/training-operator-webhook-cert`` (its certificate rotator fills it) and any key pair in its
    fixed folder :data:`TO1_CERTS`. No webhook configuration points at it, so it admits nothing: a job the webhook
    would refuse (an unknown ``runPolicy.managedBy``) is created. Loopback and free ports for metrics, probes and
    webhook instead of :8080, :8081 and :9443, which other programs may hold.
    """
    binary = cp.bin / "training-operator"
    if not binary.exists():
        raise StartError(f"no {binary}: run `make controlplane` (it builds training-operator v1.8.1)")
    cp.install_crds("training-operator")
    _create(cp, "namespace", TO1_NAMESPACE)
    _create(cp, "secret", "generic", "training-operator-webhook-cert", f"--namespace={TO1_NAMESPACE}")
    if not (TO1_CERTS / "tls.crt").exists():
        pair = Authority(workdir / "training-operator-pki").issue("webhook", "training-operator", server=True)
        TO1_CERTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.cert, TO1_CERTS / "tls.crt")
        shutil.copyfile(pair.key, TO1_CERTS / "tls.key")
    user = f"training-operator-{namespace}"
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = cp.user_kubeconfig(user, ("system:masters",), workdir / f"{user}.kubeconfig")
    args = [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--namespace={namespace}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}",
        f"--health-probe-bind-address=127.0.0.1:{free_port()}",
        f"--webhook-server-port={free_port()}",
    ]
    resources = {*JOB_PLURALS, "mpijobs", "pods", "services"}
    if gang:
        args.append(f"--gang-scheduler-name={TO1_GANG_SCHEDULER}")
        resources.add("podgroups")
    since = AuditLog(cp.audit_log).mark()
    process = OperatorProcess(workdir / f"{user}.log").start(args)
    with _running(process) as log:
        watching(cp, user, resources, process, since)
        yield log


@contextlib.contextmanager
def mljob(cp: ControlPlane, *, namespace: str, gang: bool, workdir: Path) -> Iterator[Path]:
    """mljob serving Kubeflow's kinds for ``namespace``: ``python -m mljob.operator --kubeflow all``.

    Its CRDs (MLJob's, and the kinds' from crds/kubeflow/: JAXJob and MPIJob included), its webhook on a free
    loopback port with its key pair in a Secret of namespace ``kubeflow`` (not the suite's, which suite.run empties),
    and for the gang run scheduler-plugins' PodGroups (``--gang-scheduler coscheduling``). It runs with this
    interpreter, so in the project's environment. The namespace must exist before it starts (suite.create_namespace).
    """
    crds = ROOT / "crds" / "kubeflow"
    for kustomization in (ROOT / "crds", crds):  # MLJob's own too: the operator serves it beside the kinds
        cp.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=kubeflow-e2e", "-k", str(kustomization)
        )
    names = [f"crd/{p.stem.removeprefix('kubeflow.org_')}.kubeflow.org" for p in crds.glob("kubeflow.org_*.yaml")]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/mljobs.mljob.io", *names)
    _create(cp, "namespace", TO1_NAMESPACE)
    user = f"mljob-{namespace}"
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = cp.user_kubeconfig(user, ("system:masters",), workdir / f"{user}.kubeconfig")
    args = [
        sys.executable, "-m", "mljob.operator", "--namespace", namespace, "--standalone", "--kubeflow", "all",
        "--webhook", "--webhook-host", "127.0.0.1", "--webhook-port", str(free_port()),
        "--webhook-secret", f"{TO1_NAMESPACE}/mljob-webhook-{namespace}", "--webhook-config", f"mljob-{namespace}",
    ]  # fmt: skip
    if gang:
        args += ["--gang-scheduler", "coscheduling"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}  # it has no --kubeconfig
    since = AuditLog(cp.audit_log).mark()
    process = OperatorProcess(workdir / f"{user}.log").start(args, env)
    with _running(process) as log:
        watching(cp, user, {*JOB_PLURALS, "jaxjobs", "mpijobs", "pods"}, process, since)
        until(
            lambda: _exists(cp, "validatingwebhookconfiguration", f"mljob-{namespace}"),
            READY_TIMEOUT,
            "mljob to register its admission webhook",
            interval=0.2,
        )
        yield log


def _exists(cp: ControlPlane, *args: str) -> bool:
    try:
        cp.kubectl("get", *args)
    except StartError as error:
        if "NotFound" in str(error):
            return False
        raise
    return True


OPERATORS: dict[str, Starter] = {"training-operator": training_operator, "mljob": mljob}
"""The operators by the name bench/kubeflow_suite.py's ``--operator`` takes."""
