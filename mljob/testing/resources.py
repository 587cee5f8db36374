"""Resource kinds known to the emulator, and the discovery documents built from them.

kopf scans ``/api`` and ``/apis`` before it watches anything, and silently never starts unless
``v1/namespaces``, ``v1/events`` and the CRD resource are discoverable, so the discovery answers
are generated from the same registry the storage uses and cannot drift from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclasses.dataclass(frozen=True)
class ResourceInfo:
    """One served resource; ``key`` (group, plural) identifies its storage across versions."""

    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    builtin: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.storage_version}" if self.group else self.storage_version

    def api_version_for(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def label(self) -> str:
        """The name used in request accounting and messages: ``pods``, ``mljobs.example.com``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _core(
    plural: str, kind: str, *, namespaced: bool = True, short: tuple[str, ...] = (), sub: Iterable[str] = ()
) -> ResourceInfo:
    return ResourceInfo(
        group="",
        versions=("v1",),
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        singular=kind.lower(),
        short_names=short,
        subresources=frozenset(sub),
    )


BUILTIN_RESOURCES: tuple[ResourceInfo, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short=("ns",), sub=("status", "finalize")),
    _core("pods", "Pod", short=("po",), sub=("status", "eviction", "binding", "log")),
    _core("services", "Service", short=("svc",), sub=("status",)),
    _core("endpoints", "Endpoints", short=("ep",)),
    _core("events", "Event", short=("ev",)),
    _core("configmaps", "ConfigMap", short=("cm",)),
    _core("secrets", "Secret"),
    _core("serviceaccounts", "ServiceAccount", short=("sa",)),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), sub=("status",)),
    _core("nodes", "Node", namespaced=False, short=("no",), sub=("status",)),
    ResourceInfo(
        group="apiextensions.k8s.io",
        versions=("v1",),
        plural="customresourcedefinitions",
        kind="CustomResourceDefinition",
        namespaced=False,
        singular="customresourcedefinition",
        short_names=("crd", "crds"),
        subresources=frozenset({"status"}),
    ),
    ResourceInfo(
        group="coordination.k8s.io", versions=("v1",), plural="leases", kind="Lease", namespaced=True, singular="lease"
    ),
    ResourceInfo(
        group="policy",
        versions=("v1",),
        plural="poddisruptionbudgets",
        kind="PodDisruptionBudget",
        namespaced=True,
        singular="poddisruptionbudget",
        short_names=("pdb",),
        subresources=frozenset({"status"}),
    ),
)


def resource_from_crd(crd: dict[str, Any]) -> ResourceInfo:
    """Read what a CRD declares; raises ValueError (422 Invalid) on what the API would reject."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        raise ValueError("spec.group, spec.names.plural and spec.names.kind are required")
    expected = f"{plural}.{group}"
    if crd.get("metadata", {}).get("name") != expected:
        raise ValueError(f"metadata.name must be spec.names.plural+'.'+spec.group: {expected!r}")
    scope = spec.get("scope", "Namespaced")
    if scope not in ("Namespaced", "Cluster"):
        raise ValueError(f"spec.scope must be Namespaced or Cluster, not {scope!r}")
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not versions:
        raise ValueError("spec.versions must have at least one served version")
    # The storage version goes first: it is what objects are stored (and answered) as.
    versions.sort(key=lambda v: not v.get("storage", False))
    subresources: set[str] = set()
    for version in versions:
        subresources.update((version.get("subresources") or {}).keys())
    return ResourceInfo(
        group=group,
        versions=tuple(v["name"] for v in versions),
        plural=plural,
        kind=kind,
        namespaced=scope == "Namespaced",
        singular=names.get("singular") or kind.lower(),
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        subresources=frozenset(subresources),
        builtin=False,
    )


def crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    """The status the real API server sets once a CRD is accepted; some clients wait for it."""
    spec = crd.get("spec") or {}
    return {
        "acceptedNames": dict(spec.get("names") or {}),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": ""},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": ""},
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }


def resource_list(group_version: str, resources: Iterable[ResourceInfo]) -> dict[str, Any]:
    """``/api/v1`` or ``/apis/{group}/{version}``: resources plus their ``plural/sub`` entries."""
    entries: list[dict[str, Any]] = []
    for info in sorted(resources, key=lambda r: r.plural):
        entries.append(
            {
                "name": info.plural,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": list(ALL_VERBS),
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            }
        )
        for sub in sorted(info.subresources):
            entries.append(
                {
                    "name": f"{info.plural}/{sub}",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": list(SUBRESOURCE_VERBS) if sub != "eviction" else ["create"],
                }
            )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}


def api_group(group: str, versions: Iterable[str]) -> dict[str, Any]:
    """One entry of ``/apis``, also the answer of ``/apis/{group}``."""
    ordered = list(dict.fromkeys(versions))
    items = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": items, "preferredVersion": items[0]}


def crd_manifest(
    group: str,
    plural: str,
    kind: str,
    *,
    version: str = "v1",
    namespaced: bool = True,
    status: bool = True,
    short_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A minimal, valid CRD body, so tests do not have to spell one out."""
    served: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    if status:
        served["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "shortNames": list(short_names)},
            "versions": [served],
        },
    }
