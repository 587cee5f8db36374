"""The CRD: generated from the models, structural, valid for the API server, and in sync with crds/."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from mljob.api import MLJob
from mljob.core.crd import crd, crd_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "mljob.io_mljobs.yaml"
REFRESH = "mljob crd > crds/mljob.io_mljobs.yaml"


def schema() -> dict[str, Any]:
    version = crd()["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a readable path (``spec.replicaSpecs.*.template``)."""
    yield path or "<root>", node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")


def test_committed_crd_is_up_to_date():
    committed = CRD_FILE.read_text() if CRD_FILE.exists() else ""
    generated = crd_yaml()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), str(CRD_FILE), "mljob crd")
            )[:60]
        )
        pytest.fail(
            f"{CRD_FILE.relative_to(REPO)} is out of date with mljob/api.py; refresh it with `{REFRESH}`\n{diff}"
        )


def test_crd_validates_against_the_kubernetes_schema():
    kubernetes_validate.validate(crd(), "1.37", strict=True)
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), "1.37", strict=True)


def test_crd_identity():
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "mljobs.mljob.io"
    assert spec["group"] == "mljob.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "MLJob",
        "listKind": "MLJobList",
        "plural": "mljobs",
        "singular": "mljob",
        "shortNames": ["mlj"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicaSpecs.Worker.replicas",
            "statusReplicasPath": ".status.elastic.running",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Framework": ("string", ".spec.framework"),
        "Phase": ("string", ".status.phase"),
        "Progress": ("string", ".status.progress"),
        "ETA": ("string", ".status.eta"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


def test_schema_is_structural():
    """The rules the API server enforces on a v1 CRD schema (apiextensions "structural schema")."""
    for path, node in nodes(schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: every node needs a type"
        for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "title", "const"):
            assert key not in node, f"{path}: {key} is not structural (or is noise)"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties: false is forbidden"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: properties or a map, not both"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object", path
        if "default" in node:
            check = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "default"}
            jsonschema.validate(node["default"], check)


def test_every_field_has_a_description():
    for path, node in nodes(schema()):
        if path in ("<root>", "metadata"):
            continue
        assert node.get("description"), f"{path}: no description (add Field(description=...) in mljob/api.py)"


def test_metadata_is_left_to_the_api_server():
    assert schema()["properties"]["metadata"] == {"type": "object"}


def test_templates_and_options_are_opaque_objects():
    props = schema()["properties"]["spec"]["properties"]
    template = props["replicaSpecs"]["additionalProperties"]["properties"]["template"]
    options = props["frameworkOptions"]
    for node in (template, options, options["properties"]["elasticPolicy"]):
        assert node["type"] == "object"
        assert node["x-kubernetes-preserve-unknown-fields"] is True
    assert "properties" not in template
    assert list(options["properties"]) == ["elasticPolicy"]  # declared only for the CRD's rule to read


def test_optional_fields_are_nullable_and_enums_kept():
    spec = schema()["properties"]["spec"]["properties"]
    restart = spec["replicaSpecs"]["additionalProperties"]["properties"]["restartPolicy"]
    assert restart["enum"] == ["Always", "OnFailure", "Never", "ExitCode"]
    assert restart["nullable"] is True
    run = spec["runPolicy"]["properties"]
    assert run["activeDeadlineSeconds"] == {
        "description": run["activeDeadlineSeconds"]["description"],
        "type": "integer",
        "minimum": 1,
        "nullable": True,
    }
    assert run["cleanPodPolicy"]["default"] == "Running"
    assert run["backoffLimit"]["default"] == 6


def as_jsonschema(node: Any) -> Any:
    """The CRD schema as plain JSON Schema (nullable -> a null type), to check it accepts real jobs."""
    if isinstance(node, list):
        return [as_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


FULL_JOB: dict[str, Any] = {
    "apiVersion": "mljob.io/v1alpha1",
    "kind": "MLJob",
    "metadata": {"name": "mnist", "namespace": "ml"},
    "spec": {
        "framework": "pytorch",
        "replicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": {"spec": {"containers": []}}},
            "Worker": {"replicas": 3, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {}}},
        },
        "frameworkOptions": {"nprocPerNode": "auto"},
        "runPolicy": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 600,
            "cleanPodPolicy": "All",
            "suspend": False,
            "schedulingPolicy": {"minAvailable": 4, "queue": "q"},
        },
    },
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "Created", "status": "True", "reason": "Created", "lastTransitionTime": "2024-05-06T07:08:07Z"}
        ],
        "replicaStatuses": {"Worker": {"active": 3}},
        "restartCount": 1,
        "startTime": "2024-05-06T07:08:07Z",
        "observedGeneration": 2,
    },
}


def test_crd_accepts_what_the_models_accept():
    wire = MLJob.model_validate(FULL_JOB).to_dict()
    jsonschema.validate(wire, as_jsonschema(schema()), format_checker=jsonschema.FormatChecker())
    jsonschema.validate(FULL_JOB, as_jsonschema(schema()))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "replicaSpecs", "Worker", "replicas"), -1),
        (("spec", "replicaSpecs", "Worker", "replicas"), "3"),
        (("spec", "replicaSpecs", "Worker", "restartPolicy"), "Sometimes"),
        (("spec", "runPolicy", "cleanPodPolicy"), "Some"),
        (("spec", "framework"), ""),
        (("status", "phase"), "Done"),
    ],
)
def test_crd_rejects_what_the_models_reject(path, value):
    doc = copy.deepcopy(FULL_JOB)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, as_jsonschema(schema()))
    with pytest.raises(pydantic.ValidationError):
        MLJob.model_validate(doc)


# The CEL rules, evaluated with cel-python (the API server runs them for real; this pins their meaning).


def transition_rules(node: dict[str, Any], field: str | None = None) -> list[str]:
    """The node's CEL rules (those about ``field``, by their fieldPath, when given)."""
    rules = node.get("x-kubernetes-validations", [])
    return [rule["rule"] for rule in rules if field is None or rule.get("fieldPath") == f".{field}"]


def evaluate(rule: str, new: Any, old: Any) -> bool:
    import celpy  # cel-python, pinned in requirements/test.txt

    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)}))


def spec_with(replicas: int, suspend: bool | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"framework": "pytorch", "replicaSpecs": {"Worker": {"replicas": replicas, "template": {}}}}
    if suspend is not None:
        spec["runPolicy"] = {"suspend": suspend}
    return spec


@pytest.mark.parametrize(
    ("old_suspend", "new_suspend", "replicas_change", "allowed"),
    [
        (None, None, False, True),  # no change at all
        (None, None, True, False),  # a running job cannot be resized
        (False, False, True, False),
        (True, True, True, True),  # Kueue edits a suspended job
        (True, False, True, True),  # ... and unsuspends in the same update
        (False, True, True, True),  # suspending and editing at once
    ],
)
def test_replica_specs_immutable_unless_suspended(old_suspend, new_suspend, replicas_change, allowed):
    (rule,) = transition_rules(schema()["properties"]["spec"], "replicaSpecs")
    old = spec_with(2, old_suspend)
    new = spec_with(3 if replicas_change else 2, new_suspend)
    assert evaluate(rule, new, old) is allowed


def test_template_changes_count_as_changes():
    (rule,) = transition_rules(schema()["properties"]["spec"], "replicaSpecs")
    old = spec_with(2, False)
    new = spec_with(2, False)
    new["replicaSpecs"]["Worker"]["template"] = {"spec": {"nodeSelector": {"a": "b"}}}
    assert evaluate(rule, new, old) is False


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (None, None, True),
        ("kueue.x-k8s.io/multikueue", "kueue.x-k8s.io/multikueue", True),
        (None, "kueue.x-k8s.io/multikueue", False),  # a job this operator runs is not handed to MultiKueue later
        ("kueue.x-k8s.io/multikueue", None, False),  # ... nor taken back
        ("kueue.x-k8s.io/multikueue", "mljob.io/operator", False),
    ],
)
def test_managed_by_is_immutable(old: str | None, new: str | None, allowed: bool) -> None:
    (rule,) = transition_rules(schema()["properties"]["spec"], "managedBy")
    before, after = spec_with(2, None), spec_with(2, None)
    if old is not None:
        before["managedBy"] = old
    if new is not None:
        after["managedBy"] = new
    assert evaluate(rule, after, before) is allowed


def test_framework_is_immutable():
    (rule,) = transition_rules(schema()["properties"]["spec"]["properties"]["framework"])
    assert evaluate(rule, "pytorch", "pytorch") is True
    assert evaluate(rule, "tensorflow", "pytorch") is False


def test_rules_have_messages():
    spec = schema()["properties"]["spec"]
    for node in (spec, spec["properties"]["framework"]):
        for rule in node["x-kubernetes-validations"]:
            assert rule["message"]
            assert "oldSelf" in rule["rule"]  # transition rules: they run on UPDATE only
