"""What an end-to-end scenario needs from a real cluster: its namespace, scripted pods, the operator, a history.

A scenario submits an :class:`E2EJob` whose replicas carry a *script* of runs (exit code N after T seconds, or
run until stopped). On the local control plane, kwok plays the script from the pod annotation
``kwok.mljob.io/runs`` (controlplane/stages/pod-run-end.yaml), with the kubelet's restart rules; on another
cluster (``-m cluster``) the same script is the container's ``sh -c`` command (busybox), counting its runs in an
emptyDir so in-place restarts follow it too. A test can also end a run, evict a pod or lose its node at a moment
of its choosing (annotations kwok's stages act on), which only the local control plane does.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controlplane.process import LoggedProcess
from controlplane.waiting import until
from mljob.core.crd import crd

T = TypeVar("T")
IMAGE = "busybox:1.36"
E2E_PLUGINS = Path(__file__).parent / "e2e_plugins"
"""A plugin package that raises on purpose for annotated jobs, on the operator's PYTHONPATH."""
RUNS = "kwok.mljob.io/runs"


@dataclass(frozen=True)
class Run:
    """One run of the container: exit with ``code`` after ``after`` seconds."""

    code: int = 0
    after: float = 0.3
    reason: str | None = None  # e.g. OOMKilled; default Completed for 0, Error otherwise


@dataclass(frozen=True)
class Forever:
    """Run until the pod is deleted."""


Script = tuple[Run | Forever, ...]


def shell(script: Script) -> str:
    """The script as a busybox command; the run number survives in-place restarts in an emptyDir."""
    lines = [
        "trap 'exit 143' TERM",
        "n=$(cat /mljob-e2e/runs 2>/dev/null || echo 0); echo $((n+1)) > /mljob-e2e/runs",
        "case $n in",
    ]
    for i, run in enumerate(script):
        pattern = str(i) if i < len(script) - 1 else "*"
        action = "sleep 100000 & wait" if isinstance(run, Forever) else f"sleep {run.after}; exit {run.code}"
        lines.append(f"  {pattern}) {action};;")
    lines.append("esac")
    return "\n".join(lines)


def kwok_runs(script: Script) -> str:
    """The script as kwok's pod-run-end stage reads it: ``CODE@SECONDS[@REASON]`` or ``forever``, in order."""
    return " ".join(
        "forever" if isinstance(r, Forever) else f"{r.code}@{r.after}" + (f"@{r.reason}" if r.reason else "")
        for r in script
    )


@dataclass
class Role:
    replicas: int = 1
    script: Script = (Run(0),)
    policy: str | None = None


@dataclass
class E2EJob:
    """An MLJob for a scenario: a framework, roles with scripts, and run policy."""

    name: str
    framework: str
    roles: dict[str, Role]
    run_policy: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pod_spec: dict[str, Any] = field(default_factory=dict)
    """Added to every role's pod spec (nodeSelector, ...)."""
    requests: dict[str, str] = field(default_factory=dict)
    """Resource requests of every container (cpu, memory)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels of the job (a Kueue queue name)."""

    def body(self, namespace: str) -> dict[str, Any]:
        specs = {}
        for role, r in self.roles.items():
            container = {"name": self.framework, "image": IMAGE, "command": ["sh", "-c", shell(r.script)]}
            if self.requests:
                container["resources"] = {"requests": dict(self.requests)}
            container["volumeMounts"] = [{"name": "e2e", "mountPath": "/mljob-e2e"}]
            volumes = [{"name": "e2e", "emptyDir": {}}]
            template = {
                "metadata": {"annotations": {RUNS: kwok_runs(r.script)}},
                "spec": {
                    "containers": [container],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 2,
                    **self.pod_spec,
                },
            }
            specs[role] = {"replicas": r.replicas, "template": template}
            if r.policy:
                specs[role]["restartPolicy"] = r.policy
        return {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "annotations": dict(self.annotations),
                "labels": dict(self.labels),
            },
            "spec": {"framework": self.framework, "replicaSpecs": specs, "runPolicy": dict(self.run_policy)},
        }


class OperatorProcess(LoggedProcess):
    """The real operator, the ``mljob operator`` command, as a subprocess with its log in a file.

    ``args`` replace the default ``--namespace NS --standalone`` (e.g. for peering or several
    namespaces); ``extra_args`` are added to either.
    """

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, args: list[str] | None = None) -> None:
        super().__init__(log)
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.args = args if args is not None else ["--namespace", namespace, "--standalone"]
        self.starts = 0
        self.extra_args: list[str] = []

    def start(self) -> OperatorProcess:
        path = os.pathsep.join(p for p in (str(E2E_PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.starts += 1
        command = [sys.executable, "-c", "from mljob.cli import main; main()", "operator"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== operator start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [*command, *self.args, *self.extra_args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self


def _client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(kubeconfig))


class Kube:
    """One namespace of a real cluster, through the official client as the admin; the calls every scenario makes."""

    timeout = 60.0

    def __init__(self, kubeconfig: Path, namespace: str, *, kwok: bool = True) -> None:
        import kubernetes

        self.kubeconfig = kubeconfig
        self.api = _client(kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.ext = kubernetes.client.ApiextensionsV1Api(self.api)
        self.namespace = namespace
        self.kwok = kwok
        """Whether kwok plays the pods (the local control plane): the triggers below need it."""

    # --- namespaces and the CRD -------------------------------------------------------------------------------

    def install_crd(self) -> None:
        """Create (or keep) the MLJob CRD and wait until it is Established, as `kubectl wait` would."""
        import kubernetes

        with contextlib.suppress(kubernetes.client.ApiException):
            self.ext.create_custom_resource_definition(crd())

        def established() -> bool:
            got = self.ext.read_custom_resource_definition("mljobs.mljob.io")
            return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or ())

        self.wait(established, what="the MLJob CRD to be Established")

    def create_namespace(self, name: str | None = None) -> None:
        self.core.create_namespace({"metadata": {"name": name or self.namespace}})

    def delete_namespace(self, name: str | None = None) -> None:
        import kubernetes

        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespace(name or self.namespace)

    def other(self, namespace: str) -> Kube:
        """The same cluster, another namespace."""
        return Kube(self.kubeconfig, namespace, kwok=self.kwok)

    # --- objects ------------------------------------------------------------------------------------------------

    def submit(self, job: E2EJob) -> dict[str, Any]:
        return self.create("mljobs", job.body(self.namespace))

    def _plain(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            if resource == "mljobs":
                return self.custom.get_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs", name)  # type: ignore[no-any-return]
            read = {"pods": self.core.read_namespaced_pod, "services": self.core.read_namespaced_service}[resource]
            return self._plain(read(name, self.namespace))
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def custom_get(self, group_version: str, plural: str, name: str) -> dict[str, Any] | None:
        """One namespaced custom object (a PodGroup, a Kueue Workload), or None while there is none."""
        import kubernetes

        group, version = group_version.split("/")
        try:
            return self.custom.get_namespaced_custom_object(group, version, self.namespace, plural, name)  # type: ignore[no-any-return]
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, resource: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        if resource == "mljobs":
            found = self.custom.list_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs")
            return list(found["items"])
        fn = {"pods": self.core.list_namespaced_pod, "services": self.core.list_namespaced_service}[resource]
        kind = {"pods": "Pod", "services": "Service"}[resource]
        # A list's items come without apiVersion and kind (the list says them once); put them back.
        return [
            {"apiVersion": "v1", "kind": kind, **self._plain(o)}
            for o in fn(self.namespace, label_selector=label_selector or "").items
        ]

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        if resource == "mljobs":
            return self.custom.create_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs", body)  # type: ignore[no-any-return]
        fn = {"pods": self.core.create_namespaced_pod, "services": self.core.create_namespaced_service}[resource]
        return self._plain(fn(self.namespace, body))

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        if resource == "pods":
            return self._plain(self.core.patch_namespaced_pod(name, self.namespace, patch))
        assert resource == "mljobs"
        return self.custom.patch_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs", name, patch)  # type: ignore[no-any-return]

    def delete(self, resource: str, name: str) -> None:
        if resource == "mljobs":
            self.custom.delete_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs", name)
        else:
            {"pods": self.core.delete_namespaced_pod, "services": self.core.delete_namespaced_service}[resource](
                name, self.namespace
            )

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        events = [self._plain(e) for e in items]
        return [e for e in events if reason is None or e.get("reason") == reason]

    # --- the kubelet's side, played by kwok ---------------------------------------------------------------------

    def _annotate(self, pod: str, key: str, value: str) -> None:
        assert self.kwok, "only kwok's nodes take scripted exits, evictions and lost nodes"
        self.patch("pods", pod, {"metadata": {"annotations": {f"kwok.mljob.io/{key}": value}}})

    def exit(self, pod: str, code: int = 0, reason: str | None = None) -> None:
        """The pod's current run exits now with ``code`` (its restart policy then applies)."""
        body = self.get("pods", pod)
        assert body is not None, f"no pod {pod}"
        statuses = (body.get("status") or {}).get("containerStatuses") or [{}]
        restarts = int(statuses[0].get("restartCount") or 0)
        self._annotate(pod, "exit", f"{code} {reason or '-'} {restarts}")

    def evict(self, pod: str, message: str = "The node was low on resource: memory.") -> None:
        self._annotate(pod, "evict", message)

    def lose_node(self, pod: str) -> None:
        """The pod's node stops reporting: phase Unknown (NodeLost), and deleting the pod never completes."""
        self._annotate(pod, "lose-node", "true")

    # --- waiting ------------------------------------------------------------------------------------------------

    def messages(self, name: str, reason: str, *needles: str) -> list[str]:
        """The messages of ``name``'s ``reason`` Events, once there is one and they name every needle.

        Events are posted after the status write (and a delete's after the delete), so a test that
        has just seen the status may be a moment ahead of them.
        """

        def ready() -> list[str] | None:
            found = [str(e.get("message") or "") for e in self.events(name, reason)]
            return found if found and all(n in " ".join(found) for n in needles) else None

        return self.wait(ready, what=f"{reason} events of {name} naming {needles}")

    def wait(self, predicate: Callable[[], T], timeout: float | None = None, what: str = "") -> T:
        try:
            return until(predicate, timeout or self.timeout, what or str(predicate))
        except TimeoutError as error:
            raise AssertionError(str(error)) from None

    # --- questions every scenario asks -------------------------------------------------------------

    def job(self, name: str) -> dict[str, Any]:
        found = self.get("mljobs", name)
        assert found is not None, f"MLJob {name} is gone"
        return found

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def phase(self, name: str) -> str:
        return str(self.status(name).get("phase") or "")

    def wait_phase(self, name: str, *phases: str, timeout: float | None = None) -> dict[str, Any]:
        self.wait(lambda: self.phase(name) in phases, timeout, f"{name} to reach {phases}")
        return self.status(name)

    def pods(self, job: str) -> dict[str, dict[str, Any]]:
        """The job's pods (by ownership, as the operator sees them), by name."""
        uid = self.job(job)["metadata"]["uid"]
        return {
            p["metadata"]["name"]: p
            for p in self.list("pods")
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or ())
        }

    def pod_names(self, job: str, *, live: bool = True) -> list[str]:
        return sorted(n for n, p in self.pods(job).items() if not (live and p["metadata"].get("deletionTimestamp")))


Backend = Kube
"""The name scenarios use for the cluster they run on."""


def matching(names: list[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status.get("conditions") or ()}


EXCLUSIVE = ("Running", "Restarting", "Succeeded", "Failed")


@dataclass(frozen=True)
class Change:
    """One committed version of an object, as a watch delivers it."""

    type: str  # ADDED, MODIFIED, DELETED
    plural: str  # pods, mljobs
    obj: Mapping[str, Any]


class History:
    """Checks, on every committed version the API server sends, what must hold at *every* moment.

    Fed by watches on pods and MLJobs in every namespace (:class:`Watcher`), so it sees each version of
    each object in commit order, not just what a test happens to read at the end:

    * at most one pod per replica (job uid, role, index) exists at a time;
    * at most one of Running/Restarting/Succeeded/Failed is True in a job's status;
    * a finished job never leaves its terminal phase.

    It also counts pod creations (ADDED) by namespace and name.
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.live: dict[tuple[str, str, str], set[str]] = {}
        self.max_live: dict[str, int] = Counter()
        self.finished: dict[str, str] = {}
        self.job_versions = 0
        self.added: Counter[tuple[str, str]] = Counter()
        self.seen: dict[tuple[str, str, str], str] = {}
        """(plural, namespace, name) -> the last resourceVersion seen ("" once deleted)."""
        self.lock = threading.Lock()

    def listen(self, change: Change) -> None:
        with self.lock:
            meta = change.obj["metadata"]
            key = (change.plural, str(meta.get("namespace") or ""), str(meta["name"]))
            self.seen[key] = "" if change.type == "DELETED" else str(meta.get("resourceVersion") or "")
            if change.plural == "pods":
                self._pod(change.type, change.obj)
            elif change.plural == "mljobs" and change.type != "DELETED":
                self._job(change.obj)

    def violations_in(self, namespace: str) -> list[str]:
        with self.lock:
            return [v for v in self.violations if f"{namespace}/" in v]

    def adds(self, namespace: str) -> Counter[str]:
        with self.lock:
            return Counter({name: n for (ns, name), n in self.added.items() if ns == namespace})

    def _pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        namespace = str(meta.get("namespace") or "")
        if kind == "ADDED":
            self.added[(namespace, meta["name"])] += 1
        owner = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
        if owner is None or owner.get("kind") != "MLJob":
            return
        labels = meta.get("labels") or {}
        slot = (owner["uid"], str(labels.get("mljob.io/replica-type")), str(labels.get("mljob.io/replica-index")))
        names = self.live.setdefault(slot, set())
        if kind == "DELETED":
            names.discard(meta["name"])
            return
        names.add(meta["name"])
        self.max_live[namespace] = max(self.max_live[namespace], len(names))
        if len(names) > 1:
            self.violations.append(f"{namespace}/: two pods for one replica {slot}: {sorted(names)}")

    def _job(self, job: Mapping[str, Any]) -> None:
        self.job_versions += 1
        meta, status = job["metadata"], job.get("status") or {}
        who = f"{meta.get('namespace')}/{meta['name']}@{meta.get('resourceVersion')}"
        true = [
            c["type"] for c in status.get("conditions") or () if c.get("status") == "True" and c["type"] in EXCLUSIVE
        ]
        if len(true) > 1:
            self.violations.append(f"{who}: {true} all True at once")
        uid, phase = str(meta.get("uid")), str(status.get("phase") or "")
        if uid in self.finished and phase != self.finished[uid]:
            self.violations.append(f"{who}: left the terminal phase {self.finished[uid]} for {phase!r}")
        if phase in ("Succeeded", "Failed"):
            self.finished.setdefault(uid, phase)


class Watcher:
    """Watches pods and MLJobs in every namespace into a :class:`History`, from one LIST on, resuming on errors."""

    def __init__(self, kubeconfig: Path, history: History) -> None:
        self.kubeconfig, self.history = kubeconfig, history
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(plural,), name=f"watch-{plural}", daemon=True)
            for plural in ("pods", "mljobs")
        ]

    def start(self) -> Watcher:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _run(self, plural: str) -> None:
        import kubernetes

        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    listed = self._list_fn(plural)()
                    version = (
                        listed["metadata"]["resourceVersion"]
                        if isinstance(listed, dict)  # the custom objects API answers plain JSON
                        else listed.metadata.resource_version
                    )
                stream = kubernetes.watch.Watch().stream(
                    self._list_fn(plural), resource_version=version, timeout_seconds=5, _request_timeout=10
                )
                for event in stream:
                    obj = event["raw_object"]
                    version = obj["metadata"].get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.history.listen(Change(event["type"], plural, obj))
                    if self.stopping.is_set():
                        return
            except kubernetes.client.ApiException as error:
                if error.status == 410:
                    version = ""  # too old: list again (what a watch missed in between is lost to the history)
                time.sleep(0.2)
            except Exception:
                time.sleep(0.2)

    def _list_fn(self, plural: str) -> Callable[..., Any]:
        import kubernetes

        api = _client(self.kubeconfig)
        if plural == "pods":
            return kubernetes.client.CoreV1Api(api).list_pod_for_all_namespaces  # type: ignore[no-any-return]
        custom = kubernetes.client.CustomObjectsApi(api)

        def mljobs(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object("mljob.io", "v1alpha1", "mljobs", **kwargs)

        return mljobs

    def catch_up(self, kube: Kube, timeout: float = 30.0) -> None:
        """Wait until the history has seen the namespace's pods and MLJobs as they are now."""

        def current() -> bool:
            want: dict[tuple[str, str, str], str] = {}
            for plural in ("pods", "mljobs"):
                for obj in kube.list(plural):
                    want[(plural, kube.namespace, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
            with self.history.lock:
                have = {k: v for k, v in self.history.seen.items() if k[1] == kube.namespace and v}
            return have == want

        kube.wait(current, timeout, f"the watch history to catch up with {kube.namespace}")


KUEUE = ("kueue.x-k8s.io", "v1beta2")


@contextlib.contextmanager
def queue(b: Kube, local: str, cpus: int = 2, node_labels: dict[str, str] | None = None) -> Iterator[str]:
    """A ResourceFlavor and a ClusterQueue of ``cpus`` CPUs (both named after the namespace) behind LocalQueue
    ``local`` in ``b``'s namespace; the cluster-scoped two are deleted on the way out."""
    name = b.namespace[:63]
    group, version = KUEUE
    flavor: dict[str, Any] = {"apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": name}}
    if node_labels:
        flavor["spec"] = {"nodeLabels": node_labels}
    b.custom.create_cluster_custom_object(group, version, "resourceflavors", flavor)
    flavors = [{"name": name, "resources": [{"name": "cpu", "nominalQuota": cpus}]}]
    b.custom.create_cluster_custom_object(
        group, version, "clusterqueues",
        {"apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": name},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": b.namespace}},
                  "resourceGroups": [{"coveredResources": ["cpu"], "flavors": flavors}]}},
    )  # fmt: skip
    b.custom.create_namespaced_custom_object(
        group, version, b.namespace, "localqueues",
        {"apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": local, "namespace": b.namespace},
         "spec": {"clusterQueue": name}},
    )  # fmt: skip
    try:
        yield name
    finally:
        for plural in ("clusterqueues", "resourceflavors"):
            b.custom.delete_cluster_custom_object(group, version, plural, name)
