"""What a container runs as a host process: its argv, environment, working directory and mounts; pure, no I/O.

The kubelet's rules, minus the image: ``command`` + ``args`` with ``$(VAR)`` expanded from the container's env;
the env (mljob.nodeagent.apidata: ``envFrom``, then ``env`` in order with literal values, the downward API, keys of
ConfigMaps and Secrets and resource fields, then the Services' variables); ``workingDir``; each ``volumeMount`` as a
bind of a host folder (an emptyDir or an API volume's folder under the agent's state folder, a hostPath as is,
``subPath`` below either). What cannot be served — the image's entrypoint, a missing ConfigMap or key — is a
:class:`ConfigError` the agent reports as the kubelet reports a bad container config (waiting,
``CreateContainerConfigError``, with a message that says what).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from mljob.local.launch import expand
from mljob.nodeagent import apidata, probes
from mljob.nodeagent.apidata import SourceError, Sources

NO_COMMAND = (
    "container {name!r} has no command: the node agent runs no images (it runs the command and args as a host "
    "process, and an image's entrypoint is not known here); set command"
)


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
    scratch: str = ""
    """A host folder of the container's own (under the pod's), for what its mount namespace needs to make mount
    points without touching the host's folders (mljob.nodeagent.runtime); empty: none."""


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
    sources: Sources = field(default_factory=Sources)
    image_roots: tuple[str, ...] = ()
    """What stands in for a container's image: the agent's Python environment and the interpreter it links to
    (:func:`image_binds`)."""
    """The ConfigMaps, Secrets and Services the env reads, and the Node's allocatable (fetched by the worker)."""


def field_value(pod: Mapping[str, Any], path: str, ctx: PodContext) -> str:
    """The downward API value of ``fieldRef.fieldPath``; ConfigError for a path the kubelet would not serve."""
    from_pod = apidata.downward_value(pod, path, env=True)
    if from_pod is not None:
        return from_pod
    spec = pod.get("spec") or {}
    simple = {
        "spec.nodeName": spec.get("nodeName") or ctx.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    raise ConfigError(f"fieldRef.fieldPath {path!r} is not supported by the node agent")


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> dict[str, str]:
    """The container's own variables as the kubelet makes them: ``envFrom``, then ``env`` in order (each value able
    to refer to those before it and to the Services' variables), then the Services' variables not already set."""
    name = container.get("name")
    services = apidata.service_env(pod, ctx.sources.services)
    try:
        env = apidata.env_from(container, ctx.sources)
    except SourceError as error:
        raise ConfigError(f"container {name!r} envFrom: {error}") from None
    for i, var in enumerate(container.get("env") or ()):
        key = str(var.get("name"))
        source = var.get("valueFrom")
        if source is None:
            env[key] = expand(str(var.get("value", "")), {**ctx.base_env, **services, **env})
            continue
        try:
            value = _value_from(pod, container, source, ctx)
        except (ConfigError, SourceError) as error:
            raise ConfigError(f"container {name!r} env[{i}] {key}: {error}") from None
        if value is not None:  # None: an optional key or object that is not there, so no variable
            env[key] = value
    return {**services, **env}


def _value_from(
    pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any], ctx: PodContext
) -> str | None:
    if "fieldRef" in source:
        return field_value(pod, str(source["fieldRef"].get("fieldPath")), ctx)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        target = container
        if ref.get("containerName") and ref.get("containerName") != container.get("name"):
            found = [c for c in containers(pod) if c.get("name") == ref.get("containerName")]
            if not found:
                raise ConfigError(f"resourceFieldRef: no container {ref.get('containerName')!r} in the pod")
            target = found[0]
        allocatable = ctx.sources.allocatable
        return apidata.resource_value(target, str(ref.get("resource") or ""), ref.get("divisor"), allocatable)
    if "configMapKeyRef" in source or "secretKeyRef" in source:
        return apidata.key_value(pod, source, ctx.sources)
    raise ConfigError(f"valueFrom.{', '.join(sorted(source))} is not a source the kubelet serves")


def mounts(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> list[Mount]:
    """The container's volumeMounts as binds."""
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
        read_only = bool(m.get("readOnly"))
        if "emptyDir" in volume:
            source = posixpath.join(ctx.volumes_dir, vname)
        elif "hostPath" in volume:
            source = str(volume["hostPath"].get("path") or "")
        elif apidata.api_volume(volume):  # written by the worker before any container starts; always read-only
            source, read_only = posixpath.join(ctx.volumes_dir, vname), True
        else:
            kinds = ", ".join(k for k in volume if k != "name")
            raise ConfigError(
                f"volume {vname!r} ({kinds}) is not supported by the node agent: only emptyDir, hostPath, "
                "configMap, secret, projected and downwardAPI"
            )
        sub = str(m.get("subPath") or "")
        if sub:
            if PurePosixPath(sub).is_absolute() or ".." in PurePosixPath(sub).parts:
                raise ConfigError(f"volumeMount {vname!r}: subPath {sub!r} must be a relative path inside the volume")
            source = posixpath.join(source, sub)
        out.append(Mount(source, path, read_only))
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
    binds += image_binds(binds, own.get("PATH") or ctx.base_env.get("PATH", ""), ctx.image_roots)
    hostname = str((pod.get("spec") or {}).get("hostname") or (pod.get("metadata") or {}).get("name") or "")
    env = {**ctx.base_env, "HOSTNAME": hostname, **own}
    scratch = posixpath.join(posixpath.dirname(ctx.volumes_dir), "scratch", str(container.get("name")))
    return ContainerLaunch(argv, env, str(container.get("workingDir") or "/"), tuple(binds), scratch)


def image_binds(binds: Sequence[Mount], path: str, roots: Sequence[str]) -> list[Mount]:
    """The image's files a volume would hide: bound again, read-only, over it.

    No image is run: the agent's Python environment (and each environment a ``PATH`` entry names, the MXNet one's,
    say) stands in for the image's software. An image's files are not under a pod's volumes, so a volume's
    ``mountPath`` never hides them; here they are host folders, and an emptyDir at ``/tmp`` hides a checkout under
    ``/tmp``. Each such folder a volume covers is bound back, over the volume, where it was.
    """
    candidates = [*roots, *(posixpath.dirname(p) for p in path.split(":") if p.startswith("/") and p.endswith("/bin"))]
    covered = [m.path.rstrip("/") for m in binds]
    out = []
    for root in dict.fromkeys(posixpath.normpath(c) for c in candidates):
        if any(root == c or root.startswith(c + "/") for c in covered if c):
            out.append(Mount(root, root, read_only=True))
    return out


def containers(pod: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """Every container of the pod, init containers first, in spec order."""
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]


def unsupported(pod: Mapping[str, Any]) -> list[str]:
    """What the pod asks for that the agent does not do: said once, as Events."""
    out: list[str] = []
    for c in containers(pod):
        out += probes.unsupported(c)  # gRPC probes: the others and the lifecycle hooks are run
    return out
