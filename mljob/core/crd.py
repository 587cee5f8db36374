"""The MLJob CustomResourceDefinition, generated from the pydantic models in :mod:`mljob.api`.

The models are the one source of truth; this module only translates pydantic's JSON Schema into
a Kubernetes *structural* schema (no ``$ref``, a ``type`` on every node, ``nullable`` instead of
``anyOf [X, null]``, no ``additionalProperties: false`` — the API server prunes unknown fields
and ``kubectl --validate=strict`` reports them). ``crds/mljob.io_mljobs.yaml`` holds the output
of ``mljob crd``; a test fails when the two drift. :func:`structural` is the translation, reused for the
Kubeflow kinds' CRDs (:mod:`mljob.core.kubeflow.crd`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import yaml

from mljob.api import GROUP, KIND, PLURAL, VERSION, MLJob

SINGULAR = "mljob"
SHORT_NAMES = ["mlj"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# Pod templates and framework options are opaque to the CRD on purpose. The full PodTemplateSpec
# schema inlined once per role would make the CRD megabytes (past the 1.5 MB etcd object limit
# and kubectl's annotation limit for client-side apply); the operator, the CLI and the local
# runtime validate templates against the real Kubernetes schema (mljob.core.schema), and the
# framework plugin validates its options with its own pydantic model.
OPAQUE = {
    ("spec", "replicaSpecs", "*", "template"),
    ("spec", "frameworkOptions"),
}

# Keys pydantic emits that a CRD either does not allow or that would only add noise.
_DROPPED = {"title", "additionalProperties", "$defs", "anyOf", "$ref", "const"}

SUSPENDED = "(has({s}.runPolicy) && has({s}.runPolicy.suspend) && {s}.runPolicy.suspend)"
ELASTIC = "(has({s}.frameworkOptions) && has({s}.frameworkOptions.elasticPolicy))"
ELASTIC_ROLE = "Worker"
"""The role whose count an elastic job may change while it runs, and the scale subresource scales: PyTorch's
(the only elastic framework; CEL cannot ask a plugin). Its bounds are the plugin's to check (the webhook)."""
ONLY_COUNT_CHANGED = (
    "self.replicaSpecs.size() == oldSelf.replicaSpecs.size() && self.replicaSpecs.all(k, k in oldSelf.replicaSpecs "
    f"&& (k == '{ELASTIC_ROLE}' ? (self.replicaSpecs[k].template == oldSelf.replicaSpecs[k].template "
    "&& has(self.replicaSpecs[k].restartPolicy) == has(oldSelf.replicaSpecs[k].restartPolicy) "
    "&& (!has(self.replicaSpecs[k].restartPolicy) "
    "|| self.replicaSpecs[k].restartPolicy == oldSelf.replicaSpecs[k].restartPolicy)) "
    ": self.replicaSpecs[k] == oldSelf.replicaSpecs[k]))"
)
SCALE = {
    "specReplicasPath": f".spec.replicaSpecs.{ELASTIC_ROLE}.replicas",
    "statusReplicasPath": ".status.elastic.running",
    "labelSelectorPath": ".status.selector",
}
"""``kubectl scale mljob/NAME --replicas=N`` and a HorizontalPodAutoscaler change the Worker count, as with a
PyTorchJob (whose CRD scales ``pytorchReplicaSpecs.Worker``); only an elastic job takes the change while it runs."""
SPEC_RULES = [
    {
        # A transition rule (it reads oldSelf): runs on UPDATE only. Allowed whether the old or the
        # new object is suspended, because Kueue unsuspends and injects node selectors in one update.
        # An elastic job's Worker count may change while it runs (kubectl scale, an autoscaler).
        "rule": f"{SUSPENDED.format(s='oldSelf')} || {SUSPENDED.format(s='self')} "
        "|| self.replicaSpecs == oldSelf.replicaSpecs "
        f"|| ({ELASTIC.format(s='self')} && {ELASTIC.format(s='oldSelf')} && {ONLY_COUNT_CHANGED})",
        "message": "replicaSpecs is immutable unless the job is suspended (spec.runPolicy.suspend: true); "
        f"an elastic job's {ELASTIC_ROLE} replicas may change",
        "fieldPath": ".replicaSpecs",
        "reason": "FieldValueForbidden",
    },
    {
        # Set or unset is part of it: a job that MultiKueue dispatched must not become this operator's, or back.
        "rule": "has(self.managedBy) == has(oldSelf.managedBy) "
        "&& (!has(self.managedBy) || self.managedBy == oldSelf.managedBy)",
        "message": "managedBy is immutable",
        "fieldPath": ".managedBy",
        "reason": "FieldValueInvalid",
    },
]
FRAMEWORK_RULES = [
    {"rule": "self == oldSelf", "message": "framework is immutable; create a new MLJob instead"},
]


HEADER = "# Generated from mljob/api.py by `mljob crd`; do not edit. Refresh: mljob crd > crds/mljob.io_mljobs.yaml\n"


class SchemaError(ValueError):
    """The models produced a JSON Schema construct this translator does not know how to map."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` replaced by the definition; the field's own keys win."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    return {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def structural(
    node: dict[str, Any],
    defs: dict[str, Any],
    path: tuple[str, ...],
    *,
    opaque: Collection[tuple[str, ...]] = OPAQUE,
    nullable: bool = True,
) -> dict[str, Any]:
    """One JSON Schema node (of pydantic's ``model_json_schema``) as a structural schema node.

    ``path`` names the node (``("spec", "replicaSpecs", "*", "template")``: ``*`` for a map value or a list item)
    for ``opaque`` and for errors; a node whose path matches an ``opaque`` pattern becomes an object that keeps
    unknown fields. ``nullable`` marks the ``X | None`` fields ``nullable: true`` (MLJob's CRD); without it a
    null is pruned by the API server like an absent field, as controller-gen's CRDs have it (Kubeflow's kinds).
    A node that declares ``x-kubernetes-int-or-string`` itself is kept as the model wrote it.
    """
    return _Translator(frozenset(opaque), nullable).node(node, defs, path)


@dataclass(frozen=True)
class _Translator:
    opaque: frozenset[tuple[str, ...]]
    nullable: bool

    def node(self, node: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        node = _resolve(node, defs)
        nullable = False
        if node.get("x-kubernetes-int-or-string"):
            return {k: v for k, v in node.items() if k != "title"}
        if "anyOf" in node and sorted(str(o.get("type")) for o in node["anyOf"]) == ["integer", "string"]:
            # `int | str`: a Kubernetes quantity or port, which the API server types as int-or-string.
            description = node.get("description") or "An integer or a string, e.g. a quantity: 2, 500m, 4Gi."
            return {"description": description, "x-kubernetes-int-or-string": True}
        if "anyOf" in node:
            options = [_resolve(option, defs) for option in node["anyOf"]]
            kept = [option for option in options if option.get("type") != "null"]
            if len(kept) != 1 or len(options) != 2:
                raise SchemaError(f"{'.'.join(path)}: only `X | None` unions map to a structural schema")
            if kept[0].get("x-kubernetes-int-or-string"):
                return self.node({**kept[0], "description": node.get("description")}, defs, path)
            nullable = self.nullable
            node = {
                **{k: v for k, v in node.items() if k != "anyOf"},
                **kept[0],
                "description": node.get("description"),
            }
        out: dict[str, Any] = {}
        if node.get("description"):
            out["description"] = node["description"]
        if self._matches_opaque(path):
            out.update({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
            return out
        if "type" not in node and "const" not in node:
            raise SchemaError(f"{'.'.join(path)}: no type (an Any field?); a structural schema needs one")
        out["type"] = node.get("type", "string")
        if "const" in node:
            out["enum"] = [node["const"]]
        for key, value in node.items():
            if key in _DROPPED or key in ("description", "type", "properties", "items", "required", "default"):
                continue
            out[key] = value
        if nullable:
            out["nullable"] = True
        if "default" in node and node["default"] is not None:
            # Structural defaults are applied by the API server, so `kubectl get -o yaml` shows them.
            out["default"] = node["default"]
        if out["type"] == "object":
            self._object(node, out, defs, path)
        elif out["type"] == "array":
            out["items"] = self.node(node["items"], defs, (*path, "*"))
        return out

    def _object(self, node: dict[str, Any], out: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...]) -> None:
        extra = node.get("additionalProperties")
        properties = node.get("properties")
        if properties:
            out["properties"] = {name: self.node(sub, defs, (*path, name)) for name, sub in properties.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = self.node(extra, defs, (*path, "*"))
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True

    def _matches_opaque(self, path: tuple[str, ...]) -> bool:
        return any(
            len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True))
            for pattern in self.opaque
        )


def openapi_schema() -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of MLJob; metadata is left to the API server."""
    schema = MLJob.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    properties = schema["properties"]
    spec = structural(properties["spec"], defs, ("spec",))
    spec["properties"]["framework"]["x-kubernetes-validations"] = FRAMEWORK_RULES
    spec["x-kubernetes-validations"] = SPEC_RULES
    # The one option the CRD's rules read (an elastic job's Worker count may change): declared, so CEL knows it.
    spec["properties"]["frameworkOptions"]["properties"] = {
        "elasticPolicy": {
            "description": "An elastic job's policy (PyTorch: torchrun's elastic agent); the plugin checks it.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    }
    status = structural(properties["status"], defs, ("status",))
    conditions = status["properties"]["conditions"]
    # One condition per type (Kubernetes convention), merged by type under server-side apply.
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "description": schema.get("description", ""),
        "type": "object",
        "properties": {
            "apiVersion": {"description": properties["apiVersion"]["description"], "type": "string"},
            "kind": {"description": properties["kind"]["description"], "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }


def crd() -> dict[str, Any]:
    """The MLJob CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}, "scale": SCALE},
                    "additionalPrinterColumns": [
                        {"name": "Framework", "type": "string", "jsonPath": ".spec.framework"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "ETA", "type": "string", "jsonPath": ".status.eta"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML file in ``crds/``: stable key order, no line folding, so diffs stay small."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=10_000, allow_unicode=True)
