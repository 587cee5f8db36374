"""The Kubeflow kinds' CRDs: in sync with the models, valid, structural, and Kubeflow's own outside the pod template."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mljob.core.kubeflow.crd import REFRESH, crd, crd_yaml, file_name, write_crds
from mljob.core.kubeflow.kinds import KINDS, KubeflowKind
from tests.kubeflow.kubeflow_source import ALL_KINDS, kubeflow_crd

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "crds" / "kubeflow"

TEMPLATE = "template"
OPAQUE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

EXTRAS = [
    # mljob's additions to the status: the planner reads them back (the message it said, the generation it saw,
    # the restarts it counted); a tool that reads Kubeflow's status does not know them and is not disturbed.
    "status.message: only in mljob's",
    "status.observedGeneration: only in mljob's",
    "status.restartCount: only in mljob's",
]
ALLOWED: dict[str, list[str]] = {kind: list(EXTRAS) for kind in ALL_KINDS} | {
    # mljob serves MXJob with v1.9.3's common types, Kubeflow's last MXJob CRD is v1.8.1's:
    "MXJob": [
        *EXTRAS,
        # RunPolicy.managedBy arrived in v1.9.0 (MultiKueue); mljob honours it for every kind.
        "spec.runPolicy.managedBy: only in mljob's",
        # controller-gen 0.16 (v1.9.x) marks a LabelSelector's lists atomic; v1.8.1 used controller-gen 0.14.
        "status.replicaStatuses.*.labelSelector.matchExpressions[].values.x-kubernetes-list-type: only in mljob's",
        "status.replicaStatuses.*.labelSelector.matchExpressions.x-kubernetes-list-type: only in mljob's",
    ],
}
"""Every difference from Kubeflow's CRDs outside the pod templates (which are opaque on purpose), with why."""


def schema(doc: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return node


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Every difference between two schema trees, by path (``spec.tfReplicaSpecs.*.replicas.format``).

    Descriptions are not compared (mljob's are its own words); ``required`` is compared as a set.
    """
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = []
        for key in sorted(set(ours) | set(theirs)):
            if key == "description":
                continue
            where = _child(path, key)
            if key not in theirs:
                found.append(f"{where}: only in mljob's")
            elif key not in ours:
                found.append(f"{where}: only in Kubeflow's")
            elif key == "required":
                if sorted(ours[key]) != sorted(theirs[key]):
                    found.append(f"{where}: {sorted(ours[key])} in mljob's, {sorted(theirs[key])} in Kubeflow's")
            else:
                found.extend(differences(ours[key], theirs[key], where))
        return found
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} in mljob's, {theirs!r} in Kubeflow's"]


def _child(path: str, key: str) -> str:
    """Schema keywords vanish from the path: ``properties.spec.properties.x`` reads ``spec.x``."""
    if key in ("properties",):
        return path
    if key == "additionalProperties":
        return f"{path}.*"
    if key == "items":
        return f"{path}[]"
    return f"{path}.{key}" if path else key


def without_template(doc: dict[str, Any], kind: KubeflowKind) -> dict[str, Any]:
    """``doc``'s schema with each replica's pod template replaced by a marker (its subtree is not compared)."""
    import copy

    root = copy.deepcopy(schema(doc))
    replica = root["properties"]["spec"]["properties"][kind.replica_specs_field]["additionalProperties"]
    replica["properties"][TEMPLATE] = "<pod template>"
    return root


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_committed_crd_is_up_to_date(kind):
    facts = KINDS[kind]
    path = FOLDER / file_name(facts)
    committed = path.read_text() if path.exists() else ""
    generated = crd_yaml(facts)
    if committed != generated:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True)))[:60])
        pytest.fail(f"{path.relative_to(REPO)} is out of date with mljob/core/kubeflow/api.py; run `{REFRESH}`\n{diff}")


def test_the_folder_holds_the_seven_crds_and_nothing_else(tmp_path):
    written = write_crds(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in FOLDER.glob("kubeflow.org_*.yaml"))
    assert all((FOLDER / p.name).read_text() == p.read_text() for p in written)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_crd_validates_against_the_kubernetes_schema(kind):
    kubernetes_validate.validate(crd(KINDS[kind]), "1.37", strict=True)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_identity_printer_columns_and_subresources_are_kubeflows(kind):
    facts = KINDS[kind]
    ours, theirs = crd(facts), kubeflow_crd(facts)
    assert ours["metadata"]["name"] == theirs["metadata"]["name"] == f"{facts.plural}.kubeflow.org"
    for key in ("group", "names", "scope"):
        assert ours["spec"][key] == theirs["spec"][key], key
    (mine,) = ours["spec"]["versions"]
    (kubeflows,) = theirs["spec"]["versions"]
    for key in ("name", "served", "storage", "subresources", "additionalPrinterColumns"):
        assert mine[key] == kubeflows[key], key
    assert [(c["name"], c["jsonPath"]) for c in mine["additionalPrinterColumns"]] == [
        ("State", ".status.conditions[-1:].type"),
        ("Age", ".metadata.creationTimestamp"),
    ]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_schema_is_kubeflows_outside_the_pod_template(kind):
    facts = KINDS[kind]
    found = differences(without_template(crd(facts), facts), without_template(kubeflow_crd(facts), facts))
    assert sorted(found) == sorted(ALLOWED[kind])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_pod_template_is_opaque_where_kubeflow_inlines_it(kind):
    facts = KINDS[kind]
    spec = schema(crd(facts))["properties"]["spec"]["properties"]
    template = dict(spec[facts.replica_specs_field]["additionalProperties"]["properties"][TEMPLATE])
    template.pop("description")
    assert template == OPAQUE
    theirs = schema(kubeflow_crd(facts))["properties"]["spec"]["properties"]
    inlined = theirs[facts.replica_specs_field]["additionalProperties"]["properties"][TEMPLATE]
    assert set(inlined["properties"]) == {"metadata", "spec"}
    assert len(crd_yaml(facts)) < 40_000 < len(json.dumps(kubeflow_crd(facts)))


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_schema_is_structural_and_every_field_described(kind):
    for path, node in nodes(schema(crd(KINDS[kind]))):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        assert "type" in node or int_or_string, f"{path}: every node needs a type"
        for key in ("$ref", "oneOf", "allOf", "not", "$defs", "title", "const", "nullable", "enum"):
            assert key not in node, f"{path}: {key} is not in Kubeflow's CRDs"
        if "anyOf" in node:
            assert int_or_string, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        assert not ("properties" in node and "additionalProperties" in node), path
        if path.rsplit(".", 1)[-1] not in ("*", "metadata") and not path.endswith("[]") and path != "<root>":
            assert node.get("description"), f"{path}: no description (Field(description=...) in kubeflow/api.py)"


def test_the_comparison_sees_every_kind_of_difference():
    theirs = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {
            "a": {"type": "integer", "format": "int32", "description": "x"},
            "b": {"type": "array", "items": {"type": "string"}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "gone": {"type": "string"},
        },
    }
    ours = {
        "type": "object",
        "required": ["b", "a"],  # the same set: no difference
        "properties": {
            "a": {"type": "integer", "format": "int64", "description": "y"},  # descriptions are not compared
            "b": {"type": "array", "items": {"type": "string", "enum": ["x"]}},
            "m": {"type": "object", "additionalProperties": {"type": "integer"}},
            "new": {"type": "string", "nullable": True},
        },
    }
    assert differences(ours, theirs) == [
        "a.format: 'int64' in mljob's, 'int32' in Kubeflow's",
        "b[].enum: only in mljob's",
        "gone: only in Kubeflow's",
        "m.*.type: 'integer' in mljob's, 'string' in Kubeflow's",
        "new: only in mljob's",
    ]
