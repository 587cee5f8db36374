"""One scenario body, two backends: the emulator with its simulated kubelet, or a real cluster.

A scenario submits an :class:`E2EJob` whose replicas carry a *script* of runs (exit code N after
T seconds, or run until stopped). On the emulator the kubelet plays the script; on a real cluster
the same script becomes the container's ``sh -c`` command (busybox), counting its runs in an
emptyDir so in-place restarts follow the script too. Both backends then answer the same
questions (the job, its pods, its events) and wait the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mljob.crd import crd

T = TypeVar("T")
IMAGE = "busybox:1.36"
E2E_PLUGINS = Path(__file__).parent / "e2e_plugins"
"""A plugin package that raises on purpose for annotated jobs, on the operator's PYTHONPATH."""


@dataclass(frozen=True)
class Run:
    """One run of the container: exit with ``code`` after ``after`` seconds."""

    code: int = 0
    after: float = 0.3


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

    def body(self, namespace: str) -> dict[str, Any]:
        specs = {}
        for role, r in self.roles.items():
            container = {"name": self.framework, "image": IMAGE, "command": ["sh", "-c", shell(r.script)]}
            container["volumeMounts"] = [{"name": "e2e", "mountPath": "/mljob-e2e"}]
            volumes = [{"name": "e2e", "emptyDir": {}}]
            template = {"spec": {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 2}}
            specs[role] = {"replicas": r.replicas, "template": template}
            if r.policy:
                specs[role]["restartPolicy"] = r.policy
        return {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": self.name, "namespace": namespace, "annotations": dict(self.annotations)},
            "spec": {"framework": self.framework, "replicaSpecs": specs, "runPolicy": dict(self.run_policy)},
        }


class OperatorProcess:
    """The real operator, the ``mljob operator`` command, as a subprocess with its log in a file.

    ``args`` replace the default ``--namespace NS --standalone`` (e.g. for peering or several
    namespaces); ``extra_args`` are added to either.
    """

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, args: list[str] | None = None) -> None:
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log
        self.args = args if args is not None else ["--namespace", namespace, "--standalone"]
        self.proc: subprocess.Popen[bytes] | None = None
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

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no goodbye; what a node failure or OOM kill looks like."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Backend:
    """What a scenario needs from a Kubernetes API: the same calls on both backends."""

    namespace = "default"
    timeout = 15.0
    emulated = True

    def submit(self, job: E2EJob) -> dict[str, Any]:
        raise NotImplementedError

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def list(self, resource: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def delete(self, resource: str, name: str) -> None:
        raise NotImplementedError

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

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
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            time.sleep(0.05)

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


class EmulatorBackend(Backend):
    """The emulator in its own thread, its kubelet on the emulator's loop."""

    def __init__(self, emu: Any, kubelet: Any) -> None:
        self.emu, self.kubelet = emu, kubelet

    def submit(self, job: E2EJob) -> dict[str, Any]:
        self.script(job)
        return self.create("mljobs", job.body(self.namespace))

    def script(self, job: E2EJob) -> None:
        """Hand the roles' scripts to the kubelet (a later, more specific script wins)."""
        from mljob.testing import Exit, RunForever

        for role, r in job.roles.items():
            outcomes = [RunForever() if isinstance(run, Forever) else Exit(run.code, run.after) for run in r.script]
            self.emu.call(self.kubelet.script, f"{job.name}-{role.lower()}-*", *outcomes)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.emu.get(resource, name, self.namespace)  # type: ignore[no-any-return]

    def list(self, resource: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.emu.call(self.emu.emulator.list, resource, self.namespace, label_selector=label_selector)  # type: ignore[no-any-return]

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.emu.create(resource, body, self.namespace)  # type: ignore[no-any-return]

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.emu.patch(resource, name, patch, self.namespace)  # type: ignore[no-any-return]

    def delete(self, resource: str, name: str) -> None:
        self.emu.delete(resource, name, self.namespace)

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return self.emu.call(self.emu.emulator.events_for, name, reason=reason, namespace=self.namespace)  # type: ignore[no-any-return]

    def on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return self.emu.call(fn, *args)  # type: ignore[no-any-return]


class ClusterBackend(Backend):
    """A real cluster from ``KUBECONFIG``: one namespace per session, deleted at the end."""

    emulated = False
    timeout = 120.0

    def __init__(self, namespace: str) -> None:
        import kubernetes

        kubernetes.config.load_kube_config()
        self.api = kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.ext = kubernetes.client.ApiextensionsV1Api(self.api)
        self.namespace = namespace

    def setup(self) -> None:
        import kubernetes

        with contextlib.suppress(kubernetes.client.ApiException):
            self.ext.create_custom_resource_definition(crd())
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        time.sleep(2)  # the CRD becomes established

    def teardown(self) -> None:
        self.core.delete_namespace(self.namespace)

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

    def list(self, resource: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        if resource == "mljobs":
            found = self.custom.list_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs")
            return list(found["items"])
        fn = {"pods": self.core.list_namespaced_pod, "services": self.core.list_namespaced_service}[resource]
        return [self._plain(o) for o in fn(self.namespace, label_selector=label_selector or "").items]

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        if resource == "mljobs":
            return self.custom.create_namespaced_custom_object("mljob.io", "v1alpha1", self.namespace, "mljobs", body)  # type: ignore[no-any-return]
        fn = {"pods": self.core.create_namespaced_pod, "services": self.core.create_namespaced_service}[resource]
        return self._plain(fn(self.namespace, body))

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
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


def matching(names: list[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status.get("conditions") or ()}


EXCLUSIVE = ("Running", "Restarting", "Succeeded", "Failed")


class History:
    """Checks, on every committed write the emulator makes, what must hold at *every* moment.

    Subscribed to the emulator's store, so it sees each version of each object in commit order,
    not just what a test happens to read at the end:

    * at most one pod per replica (job uid, role, index) exists at a time;
    * at most one of Running/Restarting/Succeeded/Failed is True in a job's status;
    * a finished job never leaves its terminal phase.
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.live: dict[tuple[str, str, str], set[str]] = {}
        self.max_live = 0
        self.finished: dict[str, str] = {}
        self.job_versions = 0

    def listen(self, change: Any) -> None:
        plural = change.resource.key[1]
        if plural == "pods":
            self._pod(change.type, change.obj)
        elif plural == "mljobs" and change.type != "DELETED":
            self._job(change.obj)

    def _pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
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
        self.max_live = max(self.max_live, len(names))
        if len(names) > 1:
            self.violations.append(f"two pods for one replica {slot}: {sorted(names)}")

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
