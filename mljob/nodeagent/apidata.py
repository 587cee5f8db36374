"""What a pod reads from the API server through its kubelet: ConfigMaps, Secrets, ServiceAccount tokens, the
downward API, resource fields and Services, as files of a volume or as environment variables; pure, no I/O.

The worker fetches what :func:`references` names into a :class:`Sources` (None for an object that is not there)
and asks the functions here what to write and what to set. The rules are the kubelet's:

* a ConfigMap or Secret volume holds one file per key (``data`` and ``binaryData``; a Secret's ``data`` is base64),
  or only the ``items`` it lists, at their ``path`` with their ``mode``, else the volume's ``defaultMode`` (0644);
  a missing object or key is an error unless ``optional``;
* a projected volume is the union of its sources (configMap, secret, downwardAPI, serviceAccountToken);
* the downward API's files: ``metadata.labels`` and ``metadata.annotations`` as sorted ``key="value"`` lines,
  the pod's name, namespace and uid, one label or annotation, and resource fields;
* env: ``envFrom`` (each key, with its ``prefix``), then ``env`` in order (``$(VAR)`` expanded from what came
  before and the Services' variables), ``valueFrom`` a key of a ConfigMap or Secret, a field or a resource field;
  then the Services' variables not already set: ``KUBERNETES_SERVICE_HOST`` and the rest for the ``kubernetes``
  Service always, and for every Service of the pod's namespace when ``enableServiceLinks`` (default true);
* a resource field is ``ceil(value / divisor)``; an unset limit is the Node's allocatable.
"""

from __future__ import annotations

import base64
import math
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from mljob.core.quantity import parse_quantity

DEFAULT_MODE = 0o644
TOKEN_SECONDS = 3600
"""A projected serviceAccountToken's default ``expirationSeconds``, as the API's defaulting sets it."""
MIN_TOKEN_SECONDS = 600
MASTER_SERVICE = ("default", "kubernetes")


class SourceError(Exception):
    """A ConfigMap, Secret or key a pod needs is not there (and not optional); the message is the kubelet's."""


@dataclass(frozen=True)
class TokenKey:
    """One projected token a pod needs: for its ServiceAccount, with this audience and lifetime."""

    service_account: str
    audience: str
    seconds: int


@dataclass(frozen=True)
class References:
    """The API objects a pod's volumes (``volumes``) or its containers' env (``env``) read."""

    config_maps: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    tokens: frozenset[TokenKey] = frozenset()


@dataclass(frozen=True)
class Sources:
    """What the worker fetched for a pod: objects by name (None: not found), tokens, Services, the Node's size."""

    config_maps: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    tokens: Mapping[TokenKey, str] = field(default_factory=dict)
    services: Sequence[Mapping[str, Any]] = ()
    """The pod's namespace's Services and ``default/kubernetes``, for the Services' env."""
    allocatable: Mapping[str, str] = field(default_factory=dict)
    """The Node's allocatable (``cpu``, ``memory``, ...): what a resource field reads when its limit is unset."""


@dataclass(frozen=True)
class File:
    """One file of a volume: its bytes and mode."""

    data: bytes
    mode: int


# --- what a pod reads ------------------------------------------------------------------------------------------------

API_VOLUMES = ("configMap", "secret", "projected", "downwardAPI")
"""The volume kinds whose files come from the API server: written by the agent, mounted read-only."""


def api_volume(volume: Mapping[str, Any]) -> str | None:
    """Which of :data:`API_VOLUMES` a volume is, if any."""
    return next((kind for kind in API_VOLUMES if kind in volume), None)


def references(pod: Mapping[str, Any]) -> tuple[References, References]:
    """What the pod's volumes read, and what its containers' env reads."""
    spec = pod.get("spec") or {}
    account = str(spec.get("serviceAccountName") or "default")
    maps, secrets, tokens = set(), set(), set()
    for volume in spec.get("volumes") or ():
        if "configMap" in volume:
            maps.add(str(volume["configMap"].get("name") or ""))
        if "secret" in volume:
            secrets.add(str(volume["secret"].get("secretName") or ""))
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "configMap" in source:
                maps.add(str(source["configMap"].get("name") or ""))
            if "secret" in source:
                secrets.add(str(source["secret"].get("name") or ""))
            if "serviceAccountToken" in source:
                tokens.add(token_key(account, source["serviceAccountToken"]))
    env_maps, env_secrets = set(), set()
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        for source in container.get("envFrom") or ():
            if "configMapRef" in source:
                env_maps.add(str(source["configMapRef"].get("name") or ""))
            if "secretRef" in source:
                env_secrets.add(str(source["secretRef"].get("name") or ""))
        for var in container.get("env") or ():
            value_from = var.get("valueFrom") or {}
            if "configMapKeyRef" in value_from:
                env_maps.add(str(value_from["configMapKeyRef"].get("name") or ""))
            if "secretKeyRef" in value_from:
                env_secrets.add(str(value_from["secretKeyRef"].get("name") or ""))
    return (
        References(frozenset(maps), frozenset(secrets), frozenset(tokens)),
        References(frozenset(env_maps), frozenset(env_secrets)),
    )


def token_key(account: str, source: Mapping[str, Any]) -> TokenKey:
    return TokenKey(account, str(source.get("audience") or ""), int(source.get("expirationSeconds") or TOKEN_SECONDS))


# --- the data of ConfigMaps and Secrets ------------------------------------------------------------------------------


def config_map_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    return data


def secret_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def _object(
    kind: str, name: str, found: Mapping[str, Mapping[str, Any] | None], optional: bool
) -> Mapping[str, Any] | None:
    obj = found.get(name)
    if obj is None and not optional:
        raise SourceError(f'{kind.lower()} "{name}" not found')
    return obj


def _keyed_files(
    kind: str, namespace: str, name: str, data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None,
    default_mode: int, optional: bool,
) -> dict[str, File]:  # fmt: skip
    """A ConfigMap's or Secret's files: every key, or the ``items`` listed (a missing key fails unless optional)."""
    if not items:
        return {key: File(value, default_mode) for key, value in data.items()}
    out = {}
    for item in items:
        key = str(item.get("key") or "")
        if key not in data:
            if optional:
                continue
            raise SourceError(f"configmap references non-existent config key: {key}" if kind == "ConfigMap" else
                              f"references non-existent secret key: {key}")  # fmt: skip
        out[_relative(str(item.get("path") or key))] = File(data[key], _mode(item.get("mode"), default_mode))
    return out


def _relative(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not path or PurePosixPath(path).is_absolute() or ".." in parts:
        raise SourceError(f"path {path!r} must be a relative path inside the volume")
    return posixpath.normpath(path)


def _mode(value: Any, default: int) -> int:
    return int(value) if value is not None else default


# --- the downward API and resource fields ----------------------------------------------------------------------------


def format_map(values: Mapping[str, str]) -> str:
    """Labels or annotations as the downward API writes them: sorted ``key="value"`` lines (Go's %q)."""
    return "\n".join(f"{key}={_go_quote(values[key])}" for key in sorted(values))


def _go_quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


RESOURCES = ("limits.cpu", "limits.memory", "limits.ephemeral-storage", "requests.cpu", "requests.memory",
             "requests.ephemeral-storage")  # fmt: skip


def resource_value(container: Mapping[str, Any], resource: str, divisor: Any, allocatable: Mapping[str, str]) -> str:
    """A resource field as the kubelet gives it: ``ceil(value / divisor)``; an unset limit is the Node's allocatable."""
    if resource not in RESOURCES and not resource.startswith(("limits.hugepages-", "requests.hugepages-")):
        raise SourceError(f"resource {resource!r} is not a resource field the downward API serves")
    section, name = resource.split(".", 1)
    resources = container.get("resources") or {}
    value = (resources.get(section) or {}).get(name)
    if value is None and section == "limits":
        value = allocatable.get(name)
    amount = parse_quantity(value if value is not None else 0)
    by = parse_quantity(divisor if divisor not in (None, "") else 1)
    if by <= 0:
        raise SourceError(f"divisor {divisor!r} must be positive")
    if name == "cpu":  # in millicores, as the kubelet divides MilliValue()s
        amount, by = _milli(amount), _milli(by)
    return str(math.ceil(amount / by))


def _milli(value: Decimal) -> Decimal:
    return Decimal(math.ceil(value * 1000))


def downward_value(pod: Mapping[str, Any], path: str, env: bool) -> str | None:
    """A ``fieldRef`` of the downward API that needs nothing but the pod object (None: not one of those).

    Whole label and annotation maps are for volumes only; single keys for both.
    """
    meta = pod.get("metadata") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid")}  # fmt: skip
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path == prefix and not env:
            return format_map({str(k): str(v) for k, v in (meta.get(source) or {}).items()})
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    return None


# --- a volume's files ------------------------------------------------------------------------------------------------


def volume_files(pod: Mapping[str, Any], volume: Mapping[str, Any], sources: Sources) -> dict[str, File]:
    """Every file of an API volume, by path inside it; SourceError when what it needs is not there."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    if "configMap" in volume:
        source = volume["configMap"]
        return _config_map_files(namespace, source, _mode(source.get("defaultMode"), DEFAULT_MODE), sources)
    if "secret" in volume:
        source = volume["secret"]
        return _secret_files(
            namespace, {**source, "name": source.get("secretName")}, _mode(source.get("defaultMode"), DEFAULT_MODE),
            sources,
        )  # fmt: skip
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward_files(pod, source.get("items") or (), _mode(source.get("defaultMode"), DEFAULT_MODE), sources)
    if "projected" in volume:
        projected = volume["projected"]
        default = _mode(projected.get("defaultMode"), DEFAULT_MODE)
        account = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
        out: dict[str, File] = {}
        for part in projected.get("sources") or ():
            if "configMap" in part:
                out |= _config_map_files(namespace, part["configMap"], default, sources)
            elif "secret" in part:
                out |= _secret_files(namespace, part["secret"], default, sources)
            elif "downwardAPI" in part:
                out |= _downward_files(pod, part["downwardAPI"].get("items") or (), default, sources)
            elif "serviceAccountToken" in part:
                token = part["serviceAccountToken"]
                key = token_key(account, token)
                if key not in sources.tokens:
                    raise SourceError(f"no token for service account {account!r}")
                out[_relative(str(token.get("path") or ""))] = File(sources.tokens[key].encode(), default)
            else:
                kinds = ", ".join(sorted(part))
                raise SourceError(f"projected source {kinds} is not supported by the node agent")
        return out
    raise SourceError(f"volume {volume.get('name')!r} is not an API volume")


def _config_map_files(namespace: str, source: Mapping[str, Any], default: int, sources: Sources) -> dict[str, File]:
    name, optional = str(source.get("name") or ""), bool(source.get("optional"))
    obj = _object("ConfigMap", name, sources.config_maps, optional)
    if obj is None:
        return {}
    return _keyed_files("ConfigMap", namespace, name, config_map_data(obj), source.get("items"), default, optional)


def _secret_files(namespace: str, source: Mapping[str, Any], default: int, sources: Sources) -> dict[str, File]:
    name, optional = str(source.get("name") or ""), bool(source.get("optional"))
    obj = _object("Secret", name, sources.secrets, optional)
    if obj is None:
        return {}
    return _keyed_files("Secret", namespace, name, secret_data(obj), source.get("items"), default, optional)


def _downward_files(
    pod: Mapping[str, Any], items: Iterable[Mapping[str, Any]], default: int, sources: Sources
) -> dict[str, File]:
    out = {}
    containers = {str(c.get("name")): c for c in (pod.get("spec") or {}).get("containers") or ()}
    for item in items:
        path = _relative(str(item.get("path") or ""))
        if "fieldRef" in item:
            field_path = str(item["fieldRef"].get("fieldPath") or "")
            value = downward_value(pod, field_path, env=False)
            if value is None:
                raise SourceError(f"downwardAPI {path}: fieldPath {field_path!r} is not supported in a volume")
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            container = containers.get(str(ref.get("containerName") or ""))
            if container is None:
                raise SourceError(f"downwardAPI {path}: no container {ref.get('containerName')!r} in the pod")
            value = resource_value(container, str(ref.get("resource") or ""), ref.get("divisor"), sources.allocatable)
        else:
            raise SourceError(f"downwardAPI {path}: needs fieldRef or resourceFieldRef")
        out[path] = File(value.encode(), _mode(item.get("mode"), default))
    return out


# --- env -------------------------------------------------------------------------------------------------------------


def service_env(pod: Mapping[str, Any], services: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The Services' variables (docker links style), as the kubelet sets them; ``kubernetes`` always."""
    spec = pod.get("spec") or {}
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    links = spec.get("enableServiceLinks", True) is not False
    chosen: dict[str, Mapping[str, Any]] = {}
    for svc in services:
        meta, svc_spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ip = svc_spec.get("clusterIP")
        if not ip or ip == "None":
            continue
        key = (meta.get("namespace"), meta.get("name"))
        if key == MASTER_SERVICE:
            chosen.setdefault(str(meta.get("name")), svc)
        elif meta.get("namespace") == namespace and links:
            chosen[str(meta.get("name"))] = svc
    env: dict[str, str] = {}
    for name in sorted(chosen):
        spec = chosen[name].get("spec") or {}
        ip, ports = str(spec.get("clusterIP")), spec.get("ports") or ()
        prefix = name.upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = ip
        if not ports:
            continue
        first = ports[0]
        env[f"{prefix}_SERVICE_PORT"] = str(first.get("port"))
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(port.get("port"))
        proto = str(first.get("protocol") or "TCP").lower()
        env[f"{prefix}_PORT"] = f"{proto}://{ip}:{first.get('port')}"
        for port in ports:
            protocol = str(port.get("protocol") or "TCP")
            base = f"{prefix}_PORT_{port.get('port')}_{protocol.upper()}"
            env[base] = f"{protocol.lower()}://{ip}:{port.get('port')}"
            env[base + "_PROTO"] = protocol.lower()
            env[base + "_PORT"] = str(port.get("port"))
            env[base + "_ADDR"] = ip
    return env


def env_from(container: Mapping[str, Any], sources: Sources) -> dict[str, str]:
    """``envFrom``: every key of each ConfigMap or Secret, with its prefix, later sources winning."""
    out: dict[str, str] = {}
    for i, source in enumerate(container.get("envFrom") or ()):
        prefix = str(source.get("prefix") or "")
        if "configMapRef" in source:
            ref, kind, found, read = source["configMapRef"], "ConfigMap", sources.config_maps, config_map_data
        elif "secretRef" in source:
            ref, kind, found, read = source["secretRef"], "Secret", sources.secrets, secret_data
        else:
            raise SourceError(f"envFrom[{i}] needs configMapRef or secretRef")
        obj = _object(kind, str(ref.get("name") or ""), found, bool(ref.get("optional")))
        if obj is not None:
            out |= {prefix + k: v.decode(errors="replace") for k, v in read(obj).items()}
    return out


def key_value(pod: Mapping[str, Any], source: Mapping[str, Any], sources: Sources) -> str | None:
    """A ``configMapKeyRef`` or ``secretKeyRef`` value; None when optional and missing."""
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    if "configMapKeyRef" in source:
        ref, kind, found, read = source["configMapKeyRef"], "ConfigMap", sources.config_maps, config_map_data
    else:
        ref, kind, found, read = source["secretKeyRef"], "Secret", sources.secrets, secret_data
    name, key, optional = str(ref.get("name") or ""), str(ref.get("key") or ""), bool(ref.get("optional"))
    obj = _object(kind, name, found, optional)
    if obj is None:
        return None
    data: Callable[[Mapping[str, Any]], dict[str, bytes]] = read
    values = data(obj)
    if key not in values:
        if optional:
            return None
        raise SourceError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    return values[key].decode(errors="replace")
