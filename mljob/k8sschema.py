"""Checks a pod template against the real Kubernetes OpenAPI schema.

The schema files ship with ``kubernetes-validate`` (strict variant: unknown fields are errors).
We drive ``jsonschema`` ourselves instead of calling ``kubernetes_validate.validate`` so that
EVERY problem is reported with its path, not only the first one.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import referencing

from mljob.framework import Problem

SCHEMA_VERSION = "v1.37.0-local-strict"


def _load(name: str) -> Any:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / SCHEMA_VERSION
    return json.loads((root / name).read_text())


@cache
def _validator(kind_file: str) -> jsonschema.protocols.Validator:
    schema = _load(kind_file)
    definitions = referencing.Resource.from_contents(_load("_definitions.json"))
    registry: referencing.Registry[Any] = definitions @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def json_path(prefix: str, parts: Any) -> str:
    """``a.b`` + [containers, 0, image] -> ``a.b.containers[0].image``."""
    path = prefix
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        instance: dict[str, Any] = error.instance if isinstance(error.instance, dict) else {}
        schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
        extra = sorted(set(instance) - set(schema.get("properties", {})))
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(repr(e) for e in extra)}"
    if error.validator == "required":
        return str(error.message).replace("is a required property", "is required")
    return str(error.message)


def pod_template_problems(template: Any, path: str) -> list[Problem]:
    """Every way ``template`` is not a valid Kubernetes PodTemplateSpec."""
    errors = sorted(_validator("podtemplatespec-v1.json").iter_errors(template), key=lambda e: list(e.path))
    return [Problem(json_path(path, e.absolute_path), _message(e)) for e in errors]


def object_problems(obj: dict[str, Any]) -> list[Problem]:
    """Every way a rendered object (Pod, Service, ...) is not valid for its kind."""
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/")[0].split(".")[0] if "/" in api_version else ""
    version = api_version.split("/")[-1]
    kind_file = f"{str(obj.get('kind', '')).lower()}-{group + '-' if group else ''}{version}.json"
    errors = sorted(_validator(kind_file).iter_errors(obj), key=lambda e: list(e.path))
    return [Problem(json_path("", e.absolute_path), _message(e)) for e in errors]
