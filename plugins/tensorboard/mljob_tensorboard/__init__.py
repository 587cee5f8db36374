"""TensorBoard for mljob: a sidecar serving a job's logs, beside the replica that coordinates it.

A plugin that is not a framework: it implements the two cross-cutting hooks and nothing else, so
it works for every framework, and it acts only on a job that asks, with annotations on the MLJob::

    metadata:
      annotations:
        tensorboard.mljob.io/logdir: /logs          # required: a path in the pod, or a URL (gs://, s3://)
        tensorboard.mljob.io/port: "6006"           # optional
        tensorboard.mljob.io/image: tensorflow/tensorflow:2.17.0   # optional
        tensorboard.mljob.io/replica: worker-0      # optional; default: the coordinating replica

``mljob_validate`` checks the annotations with field paths; ``mljob_mutate_pod`` adds the sidecar to
one pod: the replica named, else the one the framework marks as coordinating (label
``mljob.io/leader``: the chief, the master, worker 0 without a master).

Why a sidecar and not a TensorBoard pod of its own per job: plugins may change the pods the
operator renders but cannot add children (no hook does, and the operator's reconciler owns every
pod of a job), so a separate pod would need a core change and a lifecycle of its own. In the pod,
TensorBoard shares the trainer's volumes, so a plain ``emptyDir`` works with no shared storage; it
starts and ends with the job; ``kubectl port-forward pod/<job>-master-0 6006`` reaches it. It is a
native sidecar (an init container with ``restartPolicy: Always``): the kubelet stops it once the
trainer has exited, so the pod still completes and the job's success rule still sees it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mljob import Framework, MLJob, Problem, Replica, hookimpl

__all__ = [
    "ANNOTATIONS",
    "CONTAINER",
    "DEFAULT_IMAGE",
    "DEFAULT_PORT",
    "SCRIPT",
    "Settings",
    "mljob_mutate_pod",
    "mljob_validate",
    "sidecar",
]

PREFIX = "tensorboard.mljob.io/"
LOGDIR, PORT, IMAGE, REPLICA = (PREFIX + key for key in ("logdir", "port", "image", "replica"))
ANNOTATIONS = (LOGDIR, PORT, IMAGE, REPLICA)
DEFAULT_PORT = 6006
DEFAULT_IMAGE = "tensorflow/tensorflow:2.17.0"
"""TensorFlow's image ships the ``tensorboard`` command; any image with it (and ``sh``) will do."""
CONTAINER = "tensorboard"
VOLUME = "tensorboard-logs"
"""The ``emptyDir`` added when no volume of the pod holds the log directory."""
LEADER_LABEL = "mljob.io/leader"
"""Set by mljob on the coordinating replica's pod before any plugin sees it."""
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}

SCRIPT = """\
trap 'kill "$child" 2>/dev/null; exit 0' TERM INT
while :; do
  tensorboard --logdir "$TENSORBOARD_LOGDIR" --port "$TENSORBOARD_PORT" --bind_all & child=$!
  wait "$child"
  echo "tensorboard exited with status $?; starting it again" >&2
  sleep "${TENSORBOARD_RESTART_SECONDS:-5}" & child=$!
  wait "$child"
done
"""
"""The sidecar's command (``sh -c``). It restarts TensorBoard itself rather than leaving that to the kubelet:
mljob counts every container restart in a pod against the job's ``backoffLimit``, and a crashing viewer must
never cost the training a retry. SIGTERM (the pod ending) stops it at once."""

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
_REPLICA = re.compile(r"^([a-z0-9]+(?:-[a-z0-9]+)*)-(\d+)$")


@dataclass(frozen=True)
class Settings:
    """What a job asked for, read from its annotations (after :func:`mljob_validate` accepted them)."""

    logdir: str
    port: int = DEFAULT_PORT
    image: str = DEFAULT_IMAGE
    replica: str | None = None

    @classmethod
    def of(cls, job: MLJob) -> Settings | None:
        """The job's settings, or None for a job that asks for no TensorBoard."""
        annotations = job.metadata.annotations
        if LOGDIR not in annotations:
            return None
        return cls(
            logdir=annotations[LOGDIR],
            port=int(annotations.get(PORT, DEFAULT_PORT)),
            image=annotations.get(IMAGE, DEFAULT_IMAGE),
            replica=annotations.get(REPLICA),
        )

    @property
    def remote(self) -> bool:
        """A URL TensorBoard reads itself (gs://, s3://, hdfs://): no volume to share."""
        return bool(_URL.match(self.logdir))


def _path(key: str) -> str:
    return f"metadata.annotations.{key}"


def _target(job: MLJob, framework: Framework, named: str | None) -> tuple[Replica | None, list[Problem]]:
    """The replica whose pod gets TensorBoard, or the problem that says why there is none."""
    replicas = [Replica(role, i) for role, spec in job.spec.replica_specs.items() for i in range(spec.replicas)]
    if named is not None:
        found = [r for r in replicas if str(r) == named]
        if not found:
            names = ", ".join(str(r) for r in replicas) or "none"
            form = "" if _REPLICA.match(named) else " (write <role>-<index> in lower case, e.g. worker-0)"
            return None, [Problem(_path(REPLICA), f"{named!r} is no replica of this job{form}; replicas: {names}")]
        return found[0], []
    leaders = [r for r in replicas if framework.is_leader(job, r)]
    if not leaders:
        example = str(replicas[0]) if replicas else "worker-0"
        message = (
            f"no replica of this {framework.name} job coordinates, so TensorBoard has no pod to join; "
            f"name one with {REPLICA}, e.g. {example!r}"
        )
        return None, [Problem(_path(REPLICA), message)]
    return leaders[0], []


def problems(job: MLJob, framework: Framework) -> list[Problem]:
    """Every problem with the job's ``tensorboard.mljob.io/`` annotations, with field paths."""
    annotations = job.metadata.annotations
    found: list[Problem] = []
    for key in sorted(k for k in annotations if k.startswith(PREFIX) and k not in ANNOTATIONS):
        found.append(Problem(_path(key), f"unknown TensorBoard annotation; known: {', '.join(ANNOTATIONS)}"))
    if LOGDIR not in annotations:
        return [*found, Problem(_path(LOGDIR), f"required when any {PREFIX} annotation is set")]
    logdir = annotations[LOGDIR]
    if not (_URL.match(logdir) or (logdir.startswith("/") and logdir.rstrip("/") and " " not in logdir)):
        message = f"{logdir!r} must be an absolute path in the pod (/logs) or a URL TensorBoard reads (gs://bucket/run)"
        found.append(Problem(_path(LOGDIR), message))
    port = annotations.get(PORT, str(DEFAULT_PORT))
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        found.append(Problem(_path(PORT), f"{port!r} is not a port number (1-65535)"))
    image = annotations.get(IMAGE, DEFAULT_IMAGE)
    if not image or any(c.isspace() for c in image):
        found.append(Problem(_path(IMAGE), f"{image!r} is not an image reference"))
    replica, why = _target(job, framework, annotations.get(REPLICA))
    found += why
    if replica is not None:
        found += _pod_problems(job, framework, replica, int(port) if port.isdigit() else None)
    return found


def _pod_problems(job: MLJob, framework: Framework, replica: Replica, port: int | None) -> list[Problem]:
    """Names and ports the sidecar would collide with in the pod of ``replica``."""
    spec = job.spec.replica_specs[replica.role].template.get("spec") or {}
    base = f"spec.replicaSpecs.{replica.role}.template.spec"
    found: list[Problem] = []
    taken: dict[int, str] = {}
    role = framework.role(replica.role)
    if role is not None:
        taken[role.default_port] = f"the {framework.name} {replica.role}'s port"
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            if container.get("name") == CONTAINER:
                message = f"the TensorBoard sidecar is called {CONTAINER!r} in {replica}'s pod: rename this container"
                found.append(Problem(f"{base}.{kind}[{i}].name", message))
            for declared in container.get("ports") or []:
                if isinstance(declared.get("containerPort"), int):
                    taken[declared["containerPort"]] = f"container {container.get('name')!r}'s port"
    for i, volume in enumerate(spec.get("volumes") or []):
        if volume.get("name") == VOLUME:
            message = f"the TensorBoard sidecar may add a volume called {VOLUME!r}: rename this one"
            found.append(Problem(f"{base}.volumes[{i}].name", message))
    if port in taken:
        found.append(Problem(_path(PORT), f"{port} is {taken[port]} in {replica}'s pod; choose another"))
    return found


def _covering_mount(spec: dict[str, Any], logdir: str) -> dict[str, Any] | None:
    """The mount (of any container) whose path holds ``logdir``, the deepest one: the trainer writes there."""
    best: dict[str, Any] | None = None
    for container in spec.get("containers") or []:
        for mount in container.get("volumeMounts") or []:
            path = str(mount.get("mountPath", "")).rstrip("/")
            holds = logdir == path or logdir.startswith(path + "/")
            if holds and (best is None or len(path) > len(str(best["mountPath"]).rstrip("/"))):
                best = {k: mount[k] for k in ("name", "mountPath", "subPath", "subPathExpr") if k in mount}
    return best


def sidecar(settings: Settings, mounts: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The native sidecar: an init container that runs beside the others until they have exited."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "restartPolicy": "Always",
        "command": ["sh", "-c", SCRIPT, CONTAINER],
        "env": [
            {"name": "TENSORBOARD_LOGDIR", "value": settings.logdir},
            {"name": "TENSORBOARD_PORT", "value": str(settings.port)},
        ],
        "ports": [{"name": "tensorboard", "containerPort": settings.port, "protocol": "TCP"}],
        "resources": {kind: dict(values) for kind, values in RESOURCES.items()},
    }
    if mounts:
        container["volumeMounts"] = [{**mount, "readOnly": True} for mount in mounts]
    return container


def add_sidecar(pod: dict[str, Any], settings: Settings) -> None:
    """Add TensorBoard to ``pod``, sharing the volume that holds the log directory (an ``emptyDir`` if none does)."""
    spec = pod["spec"]
    mounts: list[dict[str, Any]] = []
    if not settings.remote:
        shared = _covering_mount(spec, settings.logdir)
        if shared is None:
            spec.setdefault("volumes", []).append({"name": VOLUME, "emptyDir": {}})
            for container in spec.get("containers") or []:
                container.setdefault("volumeMounts", []).append({"name": VOLUME, "mountPath": settings.logdir})
            shared = {"name": VOLUME, "mountPath": settings.logdir}
        mounts.append(shared)
    spec.setdefault("initContainers", []).append(sidecar(settings, mounts))


@hookimpl
def mljob_validate(job: MLJob, framework: Framework) -> list[Problem] | None:
    """Check the ``tensorboard.mljob.io/`` annotations of a job that has any; other jobs are not looked at."""
    if not any(key.startswith(PREFIX) for key in job.metadata.annotations):
        return None
    return problems(job, framework)


@hookimpl
def mljob_mutate_pod(job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
    """Add the sidecar to the pod of the replica the job named, else of its coordinating replica."""
    settings = Settings.of(job)
    if settings is None:
        return
    if settings.replica is not None:
        chosen = str(replica) == settings.replica
    else:
        chosen = (pod.get("metadata") or {}).get("labels", {}).get(LEADER_LABEL) == "true"
    if chosen:
        add_sidecar(pod, settings)
