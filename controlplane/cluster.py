"""Start a real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, kwok.

The binaries are the ones `make controlplane` built from the pinned Go modules (controlplane/build.py). Every
component listens on a free loopback port, with a fresh CA and an admin client certificate (O=system:masters),
RBAC on and an audit log the tests count requests in. kwok plays the kubelet of a few fake Nodes, driven by the
project's own Stages (controlplane/stages/) and kwok's stock node stages.

Pod logs are real: kwok's kubelet-like HTTPS server (on loopback, with a serving certificate from the cluster's CA)
answers the API server's pod log endpoint (`GET .../pods/POD/log`, what `kubectl logs` and `mljob logs` read),
because every Node says it is at 127.0.0.1 with kwok's port as its kubelet endpoint. kwok runs no containers,
so a pod has a log only when a test gives it one: :meth:`ControlPlane.give_log` writes a file and a kwok ``Logs``
object naming it; a pod with no ``Logs`` object has none, and the API server relays kwok's error. (Every pod in the
namespaces of Kubeflow's own end-to-end suite has an empty log: stages/kubeflow-e2e.yaml.)

Every process is started with a parent-death signal, so even a SIGKILLed test run leaves none behind; a normal
stop sends SIGTERM, then SIGKILL after a grace period, and waits for each.

    with ControlPlane(tmp_path).start() as cp:
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from controlplane.pki import Authority, Pair, service_account_keys
from controlplane.waiting import until

HERE = Path(__file__).resolve().parent
BIN = Path(os.environ.get("MLJOB_CONTROLPLANE_BIN", HERE / "bin"))
STAGES = HERE / "stages"
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML has it: the add-ons' CRDs are megabytes of YAML."""
SERVICE_CIDR = "10.0.0.0/24"
FEATURE_GATES = "--feature-gates=GenericWorkload=true,TopologyAwareWorkloadScheduling=true"
"""Kubernetes' own gang scheduling (scheduling.k8s.io/v1beta1 Workload and PodGroup), on every component."""

KWOK_CRDS = ("kwok.x-k8s.io_logs.yaml",)
"""kwok's CRDs (copied from its module by controlplane/build.py) the API server serves and kwok watches."""

KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
"""Where Kueue v0.17 insists on finding tls.crt and tls.key for its metrics server (cmd/kueue/main.go)."""

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


@dataclass(frozen=True)
class Node:
    """A fake Node kwok keeps Ready: its capacity and labels (zone, hostname) are what the scheduler sees."""

    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "1000"
    gpus: str = "0"
    ephemeral_storage: str = "100Gi"
    """Every kubelet reports it (the node agent too); a pod that asks for some (training-operator's MPIJob launcher
    does) is unschedulable on a Node without it."""
    labels: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        capacity = {
            "cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": self.ephemeral_storage,
        }  # fmt: skip
        if self.gpus != "0":
            capacity["nvidia.com/gpu"] = self.gpus
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


DEFAULT_NODES = (
    Node("kwok-node-0", labels={"topology.kubernetes.io/zone": "zone-a"}),
    Node("kwok-node-1", labels={"topology.kubernetes.io/zone": "zone-a"}),
    Node("kwok-node-2", labels={"topology.kubernetes.io/zone": "zone-b"}),
)


class StartError(RuntimeError):
    """A component did not become healthy; the message names it and ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_death_signal() -> None:
    """In the child, before exec: die with the test run that started us, whatever killed it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


KUEUE_NAMESPACE = "kueue-system"
"""Kueue's own namespace: where it reads MultiKueueClusters' kubeconfig Secrets."""


def kubeconfig_text(server: str, ca: Path, user: str, *, client: Pair | None = None, token: str | None = None) -> str:
    """A kubeconfig for one identity: a client certificate or a bearer token."""
    creds: dict[str, Any] = {}
    if client is not None:
        creds = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        creds = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    return yaml.safe_dump(config, sort_keys=False)


class ControlPlane:
    """One control plane in ``workdir``; ``start()`` returns once every component is healthy."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        nodes: Sequence[Node] = DEFAULT_NODES,
        bin_dir: Path = BIN,
        apiserver_args: Sequence[str] = (),
        service_account_admission: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.service_account_admission = service_account_admission
        """Whether pods get their ServiceAccount's token volume (``kube-api-access-*``) at admission, as on a real
        cluster. Off by default: kwok runs nothing that reads it, and the admission waits up to a second for a new
        namespace's ``default`` ServiceAccount. The local cluster whose pods run for real turns it on."""
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mljob-cp-"))
        self.nodes = tuple(nodes)
        self.bin = bin_dir
        self.apiserver_args = tuple(apiserver_args)
        self.log = log or (lambda message: None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.audit_log = self.logs / "audit.log"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.port = 0
        self.kubelet_port = 0
        self.startup_seconds = 0.0
        self._ca: Authority | None = None
        self._kwok_crds: list[str] = []

    # --- public ----------------------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def start(self) -> ControlPlane:
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
                   if not (self.bin / b).exists()]  # fmt: skip
        missing += [name for name in KWOK_CRDS if not (self.bin / "crds" / "kwok" / name).exists()]
        if missing:
            raise StartError(f"missing control plane binaries {missing} in {self.bin}: run `make controlplane`")
        started = time.monotonic()
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self._certificates()
            self._etcd()
            self._apiserver()
            self._create_kwok_crds()  # established while the next two start; kwok waits for them
            self._kubelet_api_access()
            self._controller_manager()
            self._scheduler()
            self._kwok()
            self._nodes()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.log(f"control plane up in {self.startup_seconds:.1f} s at {self.server} (KUBECONFIG={self.kubeconfig})")
        return self

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every component (kwok first, etcd last), SIGKILL what is left after ``grace``, wait for all."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = (), path: Path | None = None) -> Path:
        """A kubeconfig for another identity, by a client certificate the API server trusts."""
        assert self._ca is not None
        pair = self._ca.issue(f"user-{user.replace(':', '_')}", user, orgs=groups)
        path = path or self.workdir / f"{user.replace(':', '_')}.kubeconfig"
        path.write_text(kubeconfig_text(self.server, self.ca, user, client=pair))
        return path

    def inline_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> str:
        """A kubeconfig for ``user`` with every certificate inline (``*-data``), as a Secret carries it to another
        program: Kueue's MultiKueue reads a worker cluster's this way, and refuses paths to files."""
        assert self._ca is not None
        pair = self._ca.issue(f"user-{user.replace(':', '_')}", user, orgs=groups)

        def data(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self.server, "certificate-authority-data": data(self.ca)}}
            ],
            "users": [
                {"name": user, "user": {"client-certificate-data": data(pair.cert), "client-key-data": data(pair.key)}}
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        return yaml.safe_dump(config, sort_keys=False)

    def token_kubeconfig(self, token: str, user: str, path: Path) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        path.write_text(kubeconfig_text(self.server, self.ca, user, token=token))
        return path

    def kubelet_serving_pair(self, name: str, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Pair:
        """A serving certificate from the cluster's CA for another kubelet (a node agent at ``hosts``).

        The API server verifies a kubelet's certificate with this CA (--kubelet-certificate-authority) when it
        relays a pod's log; the agent checks the API server's client certificate against the same CA (``ca``).
        """
        assert self._ca is not None
        return self._ca.issue(f"kubelet-{name}", name, server=True, hosts=tuple(hosts))

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def component_log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def give_log(
        self, namespace: str, pod: str, *lines: str, container: str | None = None, timeout: float = 60.0
    ) -> Path:
        """Give a pod a log the API server serves; returns its file, to which :func:`append_log` adds lines.

        The file (under the workdir's ``pod-logs/``) holds ``lines`` in the CRI format a kubelet's log files have,
        which kwok reads; a kwok ``Logs`` object named after the pod, in its namespace, points kwok at it (for
        every container, or only ``container``). Returns once the API server serves that log, so the pod must be
        bound to a node within ``timeout``. Following the log streams what is appended later, as from a kubelet.
        """
        path = self.workdir / "pod-logs" / namespace / f"{pod}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        append_log(path, *lines)
        # (kwok v0.8.0 follows when the request asks, ?follow=true; the Log's own `follow` field is not read.)
        log: dict[str, Any] = {"logsFile": str(path)}
        if container is not None:
            log["containers"] = [container]
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"logs": [log]},
        }
        self._request("POST", f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{namespace}/logs", body)

        def served() -> bool:
            with contextlib.suppress(urllib.error.HTTPError):  # no pod yet, not bound, or kwok has not seen the object
                pod_path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
                name = container or self._request("GET", pod_path)["spec"]["containers"][0]["name"]
                query = urllib.parse.urlencode({"container": name, "limitBytes": 1})
                return self._get(f"{pod_path}/log?{query}", self.ssl_context()) == 200
            return False

        until(served, timeout, f"kwok to serve the log of {namespace}/{pod}", interval=0.1)
        return path

    # --- add-ons: the schedulers and queues placement is tested with ------------------------------------------

    def kubectl(self, *args: str, timeout: float = 120.0) -> str:
        """Run the built kubectl (the server's version) as the admin; its output, or an error with its stderr."""
        done = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def install_crds(self, addon: str) -> list[str]:
        """Apply an add-on's CRDs (copied from its pinned Go module at build time) and wait until established."""
        folder = self.bin / "crds" / addon
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise StartError(f"no CRDs for {addon} in {folder}: run `make controlplane`")
        names = []
        for path in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            names += [doc["metadata"]["name"] for doc in yaml.load_all(path.read_text(), Loader=FAST_LOADER) if doc]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
        return names

    def start_kueue(self) -> None:
        """Kueue's controller-manager, out of cluster: its CRDs, then the binary, waiting until it is ready.

        MLJob is an external framework to Kueue: the operator manages each job's Workload (mljob/core/kueue.py).
        Webhooks are not registered (no admission configuration points at them), leader election, internal
        certificates and the visibility server are off; Kueue insists on a metrics key pair in a fixed path.
        """
        self.install_crds("kueue")
        assert self._ca is not None
        metrics_certs = KUEUE_METRICS_CERTS
        webhook_certs = self.workdir / "kueue-webhook-certs"
        for folder in (metrics_certs, webhook_certs):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except PermissionError as error:
                raise StartError(
                    f"Kueue reads its metrics key pair from {folder} (a path fixed in its source when its internal "
                    f"certificate management is off) and this user cannot create it: {error}"
                ) from None
            pair = self._ca.issue(f"kueue-{folder.name}", "kueue", server=True, hosts=("127.0.0.1", "localhost"))
            shutil.copyfile(pair.cert, folder / "tls.crt")
            shutil.copyfile(pair.key, folder / "tls.key")
        health = free_port()
        config = self.workdir / "kueue.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                    "kind": "Configuration",
                    "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
                    "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
                    "webhook": {"host": "127.0.0.1", "port": free_port(), "certDir": str(webhook_certs)},
                    "leaderElection": {"leaderElect": False},
                    "internalCertManagement": {"enable": False},
                    "clientConnection": {"qps": 100, "burst": 200},
                    "featureGates": {"VisibilityOnDemand": False},
                    # Where Kueue reads a MultiKueueCluster's kubeconfig Secret (the default, a pod's ServiceAccount
                    # namespace, does not exist out of cluster).
                    "namespace": KUEUE_NAMESPACE,
                    # MultiKueue dispatches MLJobs (spec.managedBy: kueue.x-k8s.io/multikueue) to worker clusters
                    # through its adapter for custom jobs (feature gates MultiKueue and
                    # MultiKueueAdaptersForCustomJobs, both on by default in v0.17). Only ClusterQueues with a
                    # MultiKueue AdmissionCheck dispatch; a cluster without one works as before.
                    "multiKueue": {
                        "externalFrameworks": [{"name": "MLJob.v1alpha1.mljob.io"}],
                        "gcInterval": "10s",
                    },
                    # Kueue's own integrations of Kubeflow's kinds, which mljob also serves (--kubeflow): Kueue makes
                    # their Workloads and flips runPolicy.suspend itself. Their CRDs must exist before Kueue starts.
                    "integrations": {
                        "frameworks": [
                            "batch/job",
                            "kubeflow.org/pytorchjob",
                            "kubeflow.org/tfjob",
                            "kubeflow.org/mpijob",
                        ],
                        "externalFrameworks": ["MLJob.v1alpha1.mljob.io"],
                    },
                }
            )
        )
        self._spawn("kueue", ["kueue", f"--config={config}", f"--kubeconfig={self.kubeconfig}", "--zap-log-level=2"])
        self._wait(
            "kueue", lambda: self._get("/readyz", ssl.create_default_context(), f"http://127.0.0.1:{health}") == 200
        )
        self.log("kueue ready")

    def start_coscheduler(self) -> str:
        """scheduler-plugins' scheduler as a second scheduler with the Coscheduling plugin; returns its name."""
        self.install_crds("scheduler-plugins")
        name = "scheduler-plugins-scheduler"
        port = free_port()
        config = self.workdir / "coscheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 100, "burst": 200},
                    "leaderElection": {"leaderElect": False},
                    "profiles": [
                        {
                            "schedulerName": name,
                            "plugins": {
                                "multiPoint": {
                                    "enabled": [{"name": "Coscheduling"}],
                                    "disabled": [{"name": "PrioritySort"}],
                                }
                            },
                            "pluginConfig": [{"name": "Coscheduling", "args": {"permitWaitingTimeSeconds": 10}}],
                        }
                    ],
                }
            )
        )
        self._spawn(
            "scheduler-plugins",
            [
                "scheduler-plugins",
                f"--config={config}",
                *self._component_auth(),
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--v=2",
            ],
        )
        self._healthz("scheduler-plugins", port)
        self.log("scheduler-plugins ready")
        return name

    # --- start-up, one component at a time ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [str(self.bin / args[0]), *args[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_parent_death_signal,
                cwd=self.workdir,
            )
        self.procs[name] = proc
        return proc

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs.get(name)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ssl.SSLError, urllib.error.URLError, ValueError):
                if ready():
                    return
            time.sleep(0.05)
        state = "exited" if proc is not None and proc.poll() is not None else "not healthy"
        raise StartError(f"{name} {state} after start; its log ends:\n{self.component_log(name)[-3000:]}")

    def _certificates(self) -> None:
        self._ca = ca = Authority(self.pki)
        # kwok's kubelet-like server, which the API server reaches at the Nodes' address (127.0.0.1) and verifies
        # with the cluster's CA; the API server presents a client certificate to it, as to a real kubelet.
        self._kubelet_serving = ca.issue("kwok", "kwok", server=True, hosts=("127.0.0.1", "localhost"))
        self._kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        self._serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            # The node agent's pods reach it as in a cluster: the kubernetes Service's ClusterIP and names, and its
            # endpoint on the pods' gateway (controlplane/serviceproxy.py).
            hosts=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.0.0.1",
                "10.244.0.1",
            ),
        )
        self._admin = ca.issue("admin", "mljob-admin", orgs=("system:masters",))
        self._sa = service_account_keys(self.pki)

    def _etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "etcd",
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=1) as r:
                return bool(json.load(r).get("health") == "true")

        self._wait("etcd", healthy)

    def _apiserver(self) -> None:
        self.port = free_port()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self.ca}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={self._sa.cert}",
                f"--service-account-signing-key-file={self._sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                *(() if self.service_account_admission else ("--disable-admission-plugins=ServiceAccount",)),
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                # Pod logs (and exec, port-forward) go to the node's kubelet: kwok's server, at the InternalIP
                # and port each Node reports (see _kwok).
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={self.ca}",
                f"--kubelet-client-certificate={self._kubelet_client.cert}",
                f"--kubelet-client-key={self._kubelet_client.key}",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                # Blocking: each request's audit line is written before its response, so a test that counts
                # requests right after making them sees all of them.
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
                "--profiling=false",
                FEATURE_GATES,
                "--runtime-config=scheduling.k8s.io/v1beta1=true",
                "--v=1",
                *self.apiserver_args,
            ],
        )
        self.kubeconfig.write_text(kubeconfig_text(self.server, self.ca, "mljob-admin", client=self._admin))
        context = self.ssl_context()
        self._wait("kube-apiserver", lambda: self._get("/readyz", context) == 200)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS to the API server as the admin: its CA and the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def _get(self, path: str, context: ssl.SSLContext, base: str | None = None) -> int:
        with urllib.request.urlopen(f"{base or self.server}{path}", context=context, timeout=2) as r:
            return int(r.status)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request to the API server as the admin; its decoded answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.server}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=10) as r:
            return json.load(r)

    def _create_kwok_crds(self) -> None:
        for name in KWOK_CRDS:
            crd = yaml.load((self.bin / "crds" / "kwok" / name).read_text(), Loader=FAST_LOADER)
            self._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            self._kwok_crds.append(crd["metadata"]["name"])

    def _kubelet_api_access(self) -> None:
        """Let the API server's kubelet client certificate use the kubelet API (exec, port-forward, logs), as a
        cluster binds it: a kubelet in webhook mode (the node agent) asks by SubjectAccessReview."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kube-apiserver-kubelet-api-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}
            ],
        }
        try:
            self._request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        except urllib.error.HTTPError as error:
            if error.code != 409:  # a control plane started again on its own etcd data has it already
                raise

    def _kwok_crds_established(self) -> bool:
        for name in self._kwok_crds:
            found = self._request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = (found.get("status") or {}).get("conditions") or ()
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    def _component_auth(self) -> list[str]:
        return [f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}"]

    def _healthz(self, name: str, port: int) -> None:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(name, lambda: self._get("/healthz", insecure, f"https://127.0.0.1:{port}") == 200)

    def _controller_manager(self) -> None:
        port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={self.kubeconfig}",
                *self._component_auth(),
                "--leader-elect=false",
                f"--service-account-private-key-file={self._sa.key}",
                f"--root-ca-file={self.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                FEATURE_GATES,
                "--v=1",
            ],
        )
        self._healthz("kube-controller-manager", port)

    def _scheduler(self) -> None:
        port = free_port()
        config = self.workdir / "scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--config={config}",
                *self._component_auth(),
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                FEATURE_GATES,
                "--v=1",
            ],
        )
        self._healthz("kube-scheduler", port)

    def _kwok(self) -> None:
        stages = [STAGES / name for name in sorted(os.listdir(STAGES)) if name.endswith(".yaml")]
        stages += sorted((self.bin / "kwok-stages").glob("*.yaml"))
        config = self.workdir / "kwok.yaml"
        config.write_text("\n---\n".join(p.read_text() for p in stages))
        self.kubelet_port = port = free_port()
        self._wait("kube-apiserver", self._kwok_crds_established)
        # kwok's server is every node's kubelet: the node-initialize stage reports --node-ip as the Node's
        # InternalIP and --node-port as its daemonEndpoints.kubeletEndpoint.Port, which the API server dials for a
        # pod's log; HTTPS with the CA-signed pair (plain HTTP, e.g. /healthz, on the same port). Which file is a
        # pod's log, kwok learns from the Logs objects it watches (give_log).
        # --node-name is every Node's Hostname address: without one, the stage, run again on a Node that has its
        # InternalIP, writes an empty `addresses` and the API server finds no address to dial. Node leases (kwok
        # renews them, as kubelets do) keep the controller-manager from marking every Node NotReady each ~50 s,
        # which is what ran that stage again.
        self._spawn(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                # Only the Nodes this class creates (Node.body's annotation): a node agent's real Nodes on the same
                # cluster (mljob node-agent) are left to it, their status and leases and their pods.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{port}",
                f"--node-port={port}",
                "--node-ip=127.0.0.1",
                f"--tls-cert-file={self._kubelet_serving.cert}",
                f"--tls-private-key-file={self._kubelet_serving.key}",
                "--enable-crds=Logs",
                "--node-name=localhost",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
            ],
        )
        self._wait(
            "kwok", lambda: self._get("/healthz", ssl.create_default_context(), f"http://127.0.0.1:{port}") == 200
        )

    def _nodes(self) -> None:
        """Create the Nodes, then wait until kwok reports every one Ready."""
        api = _core_api(self.kubeconfig)
        for node in self.nodes:
            api.create_node(node.body())

        def ready() -> bool:
            items = api.list_node().items
            ok = [
                n.metadata.name
                for n in items
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or ())
            ]
            return len(ok) == len(self.nodes)

        self._wait("kwok", ready)
        api.api_client.close()


def append_log(path: Path, *lines: str, stream: str = "stdout") -> None:
    """Add lines to a pod's log file (give_log's), one write, in the CRI format: ``<RFC 3339 time> stdout F text``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with path.open("a") as out:
        out.write("".join(f"{now} {stream} F {line}\n" for line in lines))


def _core_api(kubeconfig: Path) -> Any:
    """The official client's CoreV1Api (untyped here: its models are checked by the API server, not mypy)."""
    import kubernetes  # the tests' and the operator's dependency; building the control plane needs none of it

    k8s: Any = kubernetes
    return k8s.client.CoreV1Api(k8s.config.new_client_from_config(str(kubeconfig)))
