"""What a container runs as a host process: its argv, environment, working directory and mounts; pure, no I/O.

The kubelet's rules, minus the image: ``command`` + ``args`` with ``$(VAR)`` expanded from the container's env;
the env in order, literal values and the downward API's ``fieldRef`` (what training jobs read: the pod's name,
namespace, uid, IP, node); ``workingDir``; each ``volumeMount`` as a bind of a host folder (an emptyDir under the
agent's state folder, a hostPath as is, ``subPath`` below either). What only a real node supplies — the image's
entrypoint, secrets, config maps, resource fields — is a :class:`ConfigError` the agent reports as the kubelet
reports a bad container config (waiting, ``CreateContainerConfigError``, with a message that says what).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from mljob.local.launch import expand

NO_COMMAND = (
    "container {name!r} has no command: the node agent runs no images (it runs the command and args as a host "
    "process, and an image's entrypoint is not known here); set command"
)
AUTO_TOKEN_PREFIX = "kube-api-access-"
"""The service-account token volume the API server's admission adds to every pod; not mounted, said once."""


class ConfigError(Exception):
    """A container the agent cannot run as written; the message names the field and why."""


class NoCommand(ConfigError):
    """A container with no command: it fails to start (the kubelet's StartError), rather than waiting forever."""


@dataclass(frozen=True)
class Mount:
    """A host path bound at ``path`` in the container's mount namespace."""

    source: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerLaunch:
    """One container's process: argv (before the sandbox's prefix), its whole environment, folder and mounts."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class PodContext:
    """The values the downward API and the volumes need, known once the pod's sandbox exists."""

    pod_ip: str
    host_ip: str
    node_name: str
    volumes_dir: str
    """The pod's folder for emptyDirs: ``<volumes_dir>/<volume name>``."""
    base_env: Mapping[str, str]
    """What every container starts with before its own env (PATH, HOME, ...): the image's env stands in here."""


def field_value(pod: Mapping[str, Any], path: str, ctx: PodContext) -> str:
    """The downward API value of ``fieldRef.fieldPath``; ConfigError for a path the kubelet would not serve."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName") or ctx.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise ConfigError(f"fieldRef.fieldPath {path!r} is not supported by the node agent")


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> dict[str, str]:
    """The container's own variables in kubelet order, each value able to refer to those before it."""
    name = container.get("name")
    if container.get("envFrom"):
        raise ConfigError(f"container {name!r}: envFrom is not supported by the node agent (no secrets or config maps)")
    env: dict[str, str] = {}
    for i, var in enumerate(container.get("env") or ()):
        key = str(var.get("name"))
        source = var.get("valueFrom")
        if source is None:
            env[key] = expand(str(var.get("value", "")), {**ctx.base_env, **env})
            continue
        if set(source) != {"fieldRef"}:
            what = ", ".join(sorted(source))
            raise ConfigError(
                f"container {name!r} env[{i}] {key}: valueFrom.{what} is not supported by the node agent "
                "(only fieldRef: metadata.name, metadata.namespace, metadata.uid, labels, annotations, "
                "spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP)"
            )
        try:
            env[key] = field_value(pod, str(source["fieldRef"].get("fieldPath")), ctx)
        except ConfigError as error:
            raise ConfigError(f"container {name!r} env[{i}] {key}: {error}") from None
    return env


def mounts(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> list[Mount]:
    """The container's volumeMounts as binds (the service account's token volume skipped: see unsupported)."""
    volumes = {str(v.get("name")): v for v in (pod.get("spec") or {}).get("volumes") or ()}
    out: list[Mount] = []
    for m in container.get("volumeMounts") or ():
        vname = str(m.get("name"))
        path = str(m.get("mountPath") or "")
        volume = volumes.get(vname)
        if volume is None:
            raise ConfigError(f"volumeMount {vname!r}: no volume of that name in the pod")
        if not PurePosixPath(path).is_absolute():
            raise ConfigError(f"volumeMount {vname!r}: mountPath {path!r} is not absolute")
        if "emptyDir" in volume:
            source = posixpath.join(ctx.volumes_dir, vname)
        elif "hostPath" in volume:
            source = str(volume["hostPath"].get("path") or "")
        elif vname.startswith(AUTO_TOKEN_PREFIX):
            continue
        else:
            kinds = ", ".join(k for k in volume if k != "name")
            raise ConfigError(
                f"volume {vname!r} ({kinds}) is not supported by the node agent: only emptyDir and hostPath"
            )
        sub = str(m.get("subPath") or "")
        if sub:
            if PurePosixPath(sub).is_absolute() or ".." in PurePosixPath(sub).parts:
                raise ConfigError(f"volumeMount {vname!r}: subPath {sub!r} must be a relative path inside the volume")
            source = posixpath.join(source, sub)
        out.append(Mount(source, path, bool(m.get("readOnly"))))
    return out


def launch(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> ContainerLaunch:
    """The container as a host process, or ConfigError (the image is never run: a command is required)."""
    command = [str(c) for c in container.get("command") or ()]
    if not command:
        raise NoCommand(NO_COMMAND.format(name=container.get("name")))
    own = container_env(pod, container, ctx)
    variables = {**ctx.base_env, **own}
    argv = tuple(expand(part, variables) for part in (*command, *(str(a) for a in container.get("args") or ())))
    binds = mounts(pod, container, ctx)
    hostname = str((pod.get("spec") or {}).get("hostname") or (pod.get("metadata") or {}).get("name") or "")
    env = {**ctx.base_env, "HOSTNAME": hostname, **own}
    return ContainerLaunch(argv, env, str(container.get("workingDir") or "/"), tuple(binds))


def containers(pod: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """Every container of the pod, init containers first, in spec order."""
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]


def unsupported(pod: Mapping[str, Any]) -> list[str]:
    """What the pod asks for that the agent does not do (probes, hooks, the token volume): said once, as Events."""
    out = [
        f"volume {v.get('name')!r} (the service account's token) is not mounted by the node agent"
        for v in (pod.get("spec") or {}).get("volumes") or ()
        if str(v.get("name")).startswith(AUTO_TOKEN_PREFIX)
    ]
    for c in containers(pod):
        for key in ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
            if c.get(key):
                out.append(f"container {c.get('name')!r}: {key} is not run by the node agent (ready = running)")
    return out
