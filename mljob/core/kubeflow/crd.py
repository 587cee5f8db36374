"""The CRDs of Kubeflow's seven kinds (MPIJob's with two versions: :func:`mpijob_crd`), generated from :mod:`.api`
with :func:`mljob.core.crd.structural`.

What matches Kubeflow's own CRDs (training-operator v1.9.3's ``manifests/base/crds/``, v1.8.1's for MXJob; a test
compares them): the names (``tfjobs.kubeflow.org``, kind, listKind, plural, singular, no short names), group,
version ``v1``, scope Namespaced, the status subresource, the scale subresource of PyTorchJob, JAXJob and
PaddleJob, the printer columns (State, Age), and, outside the pod templates, every property with its type, format,
required fields, the ``runPolicy.suspend`` default, the queue's immutability rule and the ``x-kubernetes-*``
markers. As in controller-gen's output no field is ``nullable`` (a null is pruned like an absent field) and no
string has an ``enum`` (Kubeflow's Go enums are plain strings; :mod:`.admission` checks the values).

Deliberate differences:

* **Pod templates are opaque** (``x-kubernetes-preserve-unknown-fields``), as in MLJob's own CRD, where Kubeflow
  inlines the whole PodTemplateSpec (about 570 KB per CRD, most of it repeated from core/v1). mljob checks each
  template against the real Kubernetes OpenAPI schema itself, reporting every problem with its field path
  (:mod:`.admission`), so the CRDs stay small enough for client-side ``kubectl apply``.
* **MXJob follows v1.9.3's common types**: MXJob's last CRD (v1.8.1) lacks ``runPolicy.managedBy`` (added in
  v1.9.0) and the ``x-kubernetes-list-type: atomic`` that controller-gen 0.16 writes on a label selector's lists.
* Descriptions are mljob's, shorter than the Go comments they paraphrase.

``crds/kubeflow/kubeflow.org_<plural>.yaml`` hold the output; refresh them with ``make crds`` or
``python -m mljob.core.kubeflow.crd crds/kubeflow``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from mljob.core.crd import structural
from mljob.core.kubeflow import mpijob
from mljob.core.kubeflow.api import JOBS, KubeflowModel
from mljob.core.kubeflow.kinds import KINDS, MPIJOB, WORKER, KubeflowKind

REFRESH = "python -m mljob.core.kubeflow.crd crds/kubeflow"
HEADER = "# Generated from mljob/core/kubeflow/api.py; do not edit. Refresh: {refresh}\n"

PRINTER_COLUMNS = [
    {"jsonPath": ".status.conditions[-1:].type", "name": "State", "type": "string"},
    {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
]
"""Kubeflow's ``+kubebuilder:printcolumn`` markers, as controller-gen writes them."""


def _without_enums(node: Any) -> Any:
    """The schema without ``enum``: Kubeflow's CRDs type its Go enums as plain strings."""
    if isinstance(node, dict):
        return {key: _without_enums(value) for key, value in node.items() if key != "enum"}
    if isinstance(node, list):
        return [_without_enums(value) for value in node]
    return node


def openapi_schema(kind: KubeflowKind, model: type[KubeflowModel] | None = None) -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of one kind (of ``model``, else the kind's v1 model); metadata is left to
    the API server."""
    model = model or JOBS[kind.kind]
    schema = model.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    properties = schema["properties"]
    opaque = {("spec", kind.replica_specs_field, "*", "template")}
    spec = structural(properties["spec"], defs, ("spec",), opaque=opaque, nullable=False)
    status = structural(properties["status"], defs, ("status",), opaque=(), nullable=False)
    openapi: dict[str, Any] = _without_enums(
        {
            "description": schema.get("description", ""),
            "type": "object",
            "properties": {
                "apiVersion": {
                    "description": "APIVersion defines the versioned schema of this representation of an object.",
                    "type": "string",
                },
                "kind": {"description": "Kind is the REST resource this object represents.", "type": "string"},
                "metadata": {"type": "object"},
                "spec": spec,
                "status": status,
            },
        }
    )
    return openapi


def crd(kind: KubeflowKind, versions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One kind's CustomResourceDefinition (apiextensions.k8s.io/v1); ``versions`` replace its one ``v1``."""
    names: dict[str, Any] = {
        "kind": kind.kind,
        "listKind": kind.list_kind,
        "plural": kind.plural,
        "singular": kind.singular,
    }
    if kind.short_names:
        names["shortNames"] = list(kind.short_names)
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "labelSelectorPath": f".status.replicaStatuses.{WORKER}.selector",
            "specReplicasPath": f".spec.{kind.replica_specs_field}.{WORKER}.replicas",
            "statusReplicasPath": f".status.replicaStatuses.{WORKER}.active",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": kind.group,
            "names": names,
            "scope": "Namespaced",
            "versions": versions
            or [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": subresources,
                    "additionalPrinterColumns": [dict(column) for column in PRINTER_COLUMNS],
                }
            ],
        },
    }


MPIJOB_ENUMS = {
    ("properties", "spec", "properties", "mpiImplementation"): [m.value for m in mpijob.MPIImplementation],
    ("properties", "status", "properties", "conditions", "items", "properties", "status"): ["True", "False", "Unknown"],
}
"""The only enums of the MPI Operator's v2beta1 CRD (its other Go enums are plain strings there too)."""


def mpijob_crd() -> dict[str, Any]:
    """MPIJob's one CRD: ``v2beta1`` (the MPI Operator v0.8.0's, stored) and ``v1`` (training-operator v1.8.1's),
    converted by the operator's webhook (:mod:`.mpijob`).

    The file sets no ``conversion`` (the API server's default is ``None``): a cluster can apply it before the
    operator runs, the operator points it at its webhook when it starts (``mljob operator --kubeflow MPIJob`` with
    ``--webhook``), and applying the file again leaves that alone. v2beta1 has no
    printer columns and a status whose conditions are a map keyed by type, as the MPI Operator's CRD.
    """
    v2 = openapi_schema(MPIJOB, mpijob.MPIJobV2)
    for path, values in MPIJOB_ENUMS.items():
        node = v2
        for key in path:
            node = node[key]
        node["enum"] = list(values)
    versions = [
        {
            "name": "v2beta1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": v2},
            "subresources": {"status": {}},
        },
        {
            "name": "v1",
            "served": True,
            "storage": False,
            "schema": {"openAPIV3Schema": openapi_schema(MPIJOB, mpijob.MPIJobV1)},
            "subresources": {"status": {}},
            "additionalPrinterColumns": [dict(column) for column in reversed(PRINTER_COLUMNS)],  # MPIJob's order
        },
    ]
    return crd(MPIJOB, versions)


def file_name(kind: KubeflowKind) -> str:
    """``kubeflow.org_tfjobs.yaml``: Kubeflow's own file names."""
    return f"{kind.group}_{kind.plural}.yaml"


def crd_yaml(kind: KubeflowKind) -> str:
    """One CRD as its file: stable key order, no line folding, so diffs stay small."""
    document = mpijob_crd() if kind is MPIJOB else crd(kind)
    body = yaml.safe_dump(document, sort_keys=False, width=10_000, allow_unicode=True)
    return HEADER.format(refresh=REFRESH) + body


def write_crds(folder: Path | str) -> list[Path]:
    """Write the seven CRDs into ``folder`` (created if missing); the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in (*KINDS.values(), MPIJOB):
        path = out / file_name(kind)
        path.write_text(crd_yaml(kind))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: {REFRESH.replace('crds/kubeflow', 'OUTDIR')}", file=sys.stderr)
        return 2
    for path in write_crds(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
