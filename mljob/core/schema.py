"""Checks a pod template against the real Kubernetes OpenAPI schema.

The schema files ship with ``kubernetes-validate`` (strict variant: unknown fields are errors).
We drive ``jsonschema`` ourselves instead of calling ``kubernetes_validate.validate`` so that
EVERY problem is reported with its path, not only the first one.
"""

from __future__ import annotations

import difflib
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


def _refs(node: Any) -> set[str]:
    """The ``$defs`` names that ``node`` refers to (``.../_definitions.json#/$defs/<name>``)."""
    if isinstance(node, dict):
        found = {str(node["$ref"]).rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _lean(node: Any) -> Any:
    """The schema without its descriptions: no message here quotes one, and they are most of its size."""
    if isinstance(node, dict):
        return {k: _lean(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [_lean(value) for value in node]
    return node


def _definitions(schema: Any) -> dict[str, Any]:
    """What ``schema`` needs of every Kubernetes definition: those it reaches, without descriptions.

    The operator validates every job's templates with it for as long as it runs, so it keeps only the definitions
    ``schema`` reaches, without their descriptions, not all of them (bench/README.md, "Memory").
    """
    everything = _load("_definitions.json")
    defs: dict[str, Any] = everything.get("$defs") or {}
    kept: dict[str, Any] = {}
    todo = _refs(schema)
    while todo:
        name = todo.pop()
        if name in kept or name not in defs:
            continue
        kept[name] = _lean(defs[name])
        todo |= _refs(kept[name])
    return {**{k: v for k, v in everything.items() if k != "$defs"}, "$defs": kept}


@cache
def _validator(kind_file: str) -> jsonschema.protocols.Validator:
    schema = _lean(_load(kind_file))
    definitions = referencing.Resource.from_contents(_definitions(schema))
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


TYPE_WORDS = {
    "array": "a list",
    "object": "a mapping",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "null": "null",
}


def got(value: Any) -> str:
    """A user's value as a person reads it in YAML: ``'3'`` is visibly a string, ``true`` a boolean."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value}"


def type_problem(expected: list[str], value: Any) -> str:
    """``must be an integer, got '80' (quoted, so a string: remove the quotes)``."""
    words = [TYPE_WORDS.get(t, t) for t in expected if t != "null"] or ["null"]
    message = f"must be {' or '.join(words)}, got {got(value)}"
    if isinstance(value, str) and any(t in ("integer", "number", "boolean") for t in expected):
        message += " (quoted, so a string: remove the quotes)"
    return message


def suggestion(name: str, known: Any) -> str:
    """``; did you mean 'imagePullPolicy'?`` when a known name is close, else nothing."""
    match = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _types(schema: Any) -> list[str]:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return [kind] if isinstance(kind, str) else list(kind or [])


def _problems(error: jsonschema.ValidationError, prefix: str) -> list[Problem]:
    """One jsonschema error as problems: an unknown or missing field gets its own path."""
    path = json_path(prefix, error.absolute_path)
    instance = error.instance
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    rule: Any = error.validator_value
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        return [
            Problem(json_path(path, [name]), "unknown field" + suggestion(name, known))
            for name in sorted(set(instance) - set(known))
        ]
    if error.validator == "required" and isinstance(instance, dict):
        return [Problem(json_path(path, [name]), "required field is missing") for name in rule if name not in instance]
    if error.validator == "type":
        return [Problem(path, type_problem(_types(schema), instance))]
    if error.validator in ("oneOf", "anyOf"):
        options = [t for option in rule for t in _types(option)]
        if options and all(isinstance(option, dict) and set(option) <= {"type"} for option in rule):
            return [Problem(path, type_problem(list(dict.fromkeys(options)), instance))]
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in rule)
        return [Problem(path, f"must be one of {allowed}; got {got(instance)}")]
    return [Problem(path, str(error.message))]


def pod_template_problems(template: Any, path: str) -> list[Problem]:
    """Every way ``template`` is not a valid Kubernetes PodTemplateSpec."""
    errors = sorted(_validator("podtemplatespec-v1.json").iter_errors(template), key=lambda e: list(e.path))
    return [problem for error in errors for problem in _problems(error, path)]


def object_problems(obj: dict[str, Any]) -> list[Problem]:
    """Every way a rendered object (Pod, Service, ...) is not valid for its kind."""
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/")[0].split(".")[0] if "/" in api_version else ""
    version = api_version.split("/")[-1]
    kind_file = f"{str(obj.get('kind', '')).lower()}-{group + '-' if group else ''}{version}.json"
    try:
        validator = _validator(kind_file)
    except FileNotFoundError:
        return [Problem("kind", f"no Kubernetes {SCHEMA_VERSION} schema for {api_version} {obj.get('kind')}")]
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    return [problem for error in errors for problem in _problems(error, "")]
