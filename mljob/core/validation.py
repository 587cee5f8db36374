"""Turning a document into a checked MLJob, or into every problem with its field path.

One function answers for the CLI (``mljob validate``), the local runtime and the operator, so a
job rejected in one place is rejected with the same words everywhere. Nothing here raises on bad
input: problems are data. A plugin that raises becomes a ``PluginError`` problem for that job only.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mljob.api import API_VERSION, KIND, MULTIKUEUE_CONTROLLER, MLJob
from mljob.core.names import (
    DNS_LABEL_MAX,
    QUEUE_LABEL,
    RESERVED_LABEL_PREFIX,
    dns1035_problem,
    dns1123_problem,
    pod_name,
)
from mljob.core.quantity import parse_quantity
from mljob.core.render import wiring_container
from mljob.core.schema import got, json_path, pod_template_problems, suggestion, type_problem
from mljob.framework import Framework, Problem, Replica, describe
from mljob.plugins import PluginError, Plugins

INVALID_SPEC = "InvalidSpec"
PLUGIN_ERROR = "PluginError"


@dataclass(frozen=True)
class Limits:
    """What one MLJob may ask for: a platform sets these (``mljob operator --max-...``) so that one file cannot
    ask for a million pods. Enforced by the admission webhook, the operator and ``mljob validate`` alike."""

    max_replicas: int = 2000
    """Replicas of one role."""
    max_pods: int = 5000
    """Pods of one job, all roles together."""
    max_name_length: int = DNS_LABEL_MAX
    """Characters in the job's name (it also names the headless service and prefixes every pod)."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one document: a job and its framework, or problems."""

    job: MLJob | None = None
    framework: Framework | None = None
    problems: list[Problem] = field(default_factory=list)
    reason: str = INVALID_SPEC
    """``InvalidSpec`` or ``PluginError``: the condition reason when the operator rejects the job."""

    @property
    def ok(self) -> bool:
        return not self.problems and self.job is not None and self.framework is not None


KUBEFLOW_KINDS = {
    "PyTorchJob": ("pytorch", "pytorchReplicaSpecs"),
    "TFJob": ("tensorflow", "tfReplicaSpecs"),
    "MXJob": ("mxnet", "mxReplicaSpecs"),
}
"""Kubeflow kinds an MLJob replaces: the message says how to migrate instead of listing every field."""

_YAML_HINTS = {
    "found character '\\t' that cannot start any token": "YAML indents with spaces, not tabs",
    "expected <block end>": "check the indentation",
    "mapping values are not allowed here": "check the indentation, or quote a value that contains ': '",
    "could not find expected ':'": "a key needs ': ' after it, or a multi-line value needs quotes",
}


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that rejects a key given twice in one mapping.

    PyYAML silently keeps the last value, so a second ``replicas:`` would win without a word. The
    pure-Python parser, not libyaml's: a job file is small, and its syntax errors name the problem
    (tabs, an unclosed quote) where libyaml's only name the character.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; SafeLoader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first set on line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError, source: str, text: str) -> Problem:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return Problem("", f"{source}: YAML syntax error: {problem}")
    kind = "YAML error" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
    message = f"{source}: line {mark.line + 1}, column {mark.column + 1}: {kind}: {problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        message += f" ({context} that starts on line {context_mark.line + 1})"
    hint = next((hint for key, hint in _YAML_HINTS.items() if problem.startswith(key)), None)
    if hint:
        message += f"; {hint}"
    lines = text.splitlines()
    if 0 <= mark.line < len(lines) and lines[mark.line].strip():
        message += f": {lines[mark.line].rstrip()!r}"
    return Problem("", message)


def load_documents(text: str, source: str = "<input>") -> tuple[list[Any], list[Problem]]:
    """The YAML documents in ``text`` (empty ones dropped), or the syntax error with its line."""
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as error:
        return [], [_yaml_problem(error, source, text)]
    if not docs:
        return [], [Problem("", f"{source}: the file is empty; expected an MLJob (apiVersion: {API_VERSION})")]
    return docs, []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``; other types unchanged."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _known_fields(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The wire names of the fields allowed where ``loc`` points (empty when not a model there)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            info = fields.get(str(part)) or current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif typing.get_origin(current) in (dict, Mapping):
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _pydantic_message(item: Any, model: type[BaseModel] | None) -> str:
    """One pydantic error in the words a person uses for YAML; falls back to pydantic's own."""
    kind, loc, value = item["type"], tuple(item["loc"]), item.get("input")
    ctx = item.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        hint = suggestion(str(loc[-1]), known)
        if not hint and known and len(known) <= 8:
            hint = f"; expected one of {', '.join(known)}"
        return "unknown field" + hint
    if kind == "missing":
        return "required field is missing"
    if loc == ("apiVersion",) and kind == "literal_error":
        return f"must be {API_VERSION}, got {got(value)}"
    if loc == ("kind",) and kind == "literal_error":
        if value in KUBEFLOW_KINDS:
            framework, field_name = KUBEFLOW_KINDS[value]
            return (
                f"must be {KIND}, got {value!r}; `mljob convert FILE` turns a Kubeflow {value} into an MLJob "
                f"(spec.framework: {framework}, spec.{field_name} as spec.replicaSpecs)"
            )
        return f"must be {KIND}, got {got(value)}"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx.get('expected', '?')}; got {got(value)}"
    types_by_error = {
        "int_type": "integer",
        "int_parsing": "integer",
        "int_from_float": "integer",
        "string_type": "string",
        "bool_type": "boolean",
        "bool_parsing": "boolean",
        "dict_type": "object",
        "model_type": "object",
        "model_attributes_type": "object",
        "list_type": "array",
    }
    if kind in types_by_error:
        return type_problem([types_by_error[kind]], value)
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {got(value)}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}, got {got(value)}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short" and loc == ("spec", "replicaSpecs"):
        return "needs at least one role, e.g. Worker: {replicas: 2, template: {...}}"
    return str(item["msg"])


def pydantic_problems(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[Problem]:
    """Pydantic's errors as ``path: message`` in plain words, with the user's value where it helps.

    ``model`` is the model that was validated (default :class:`MLJob` when there is no prefix);
    it lets an unknown field's message suggest the field the user probably meant.
    """
    root = model if model is not None else (MLJob if not prefix else None)
    return [
        Problem(json_path(prefix, item["loc"]), _pydantic_message(item, root))
        for item in error.errors(include_url=False)
    ]


def parse_job(doc: Any) -> tuple[MLJob | None, list[Problem]]:
    """Parse one document into the API model; a non-mapping or a schema mismatch is a problem."""
    if not isinstance(doc, dict):
        what = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(doc), f"a {type(doc).__name__}"
        )
        return None, [
            Problem("", f"the document is {what}, not a mapping; an MLJob starts with apiVersion: {API_VERSION}")
        ]
    try:
        return MLJob.model_validate(doc), []
    except ValidationError as error:
        return None, pydantic_problems(error)


def check_document(
    doc: Any, plugins: Plugins, limits: Limits = DEFAULT_LIMITS, *, gang_may_wait: bool = False
) -> Checked:
    """Parse and fully check one document (``gang_may_wait``: see :func:`check_job`)."""
    job, problems = parse_job(doc)
    if job is None:
        return Checked(problems=problems + _raw_template_problems(doc, problems))
    return check_job(job, plugins, limits, gang_may_wait=gang_may_wait)


def _raw_template_problems(doc: Any, found: list[Problem]) -> list[Problem]:
    """Pod template problems of a document the models rejected, so one run reports everything.

    The framework's checks need a parsed job; the Kubernetes schema check needs only the template.
    """
    specs = (
        doc.get("spec", {}).get("replicaSpecs") if isinstance(doc, dict) and isinstance(doc.get("spec"), dict) else None
    )
    if not isinstance(specs, dict):
        return []
    problems: list[Problem] = []
    for role, spec in specs.items():
        template = spec.get("template") if isinstance(spec, dict) else None
        path = f"spec.replicaSpecs.{role}.template"
        if isinstance(template, dict) and not any(p.path.startswith(path) for p in found):
            problems.extend(pod_template_problems(template, path))
    return problems


def check_job(job: MLJob, plugins: Plugins, limits: Limits = DEFAULT_LIMITS, *, gang_may_wait: bool = False) -> Checked:
    """Every problem with an already-parsed job: limits, names, roles, templates, wiring, options, plugins.

    ``gang_may_wait``: a ``minAvailable`` above the job's replicas is accepted (the gang waits until it is lowered),
    as Kubeflow accepts it for its kinds; for an MLJob it is an error.
    """
    too_big = list(limit_problems(job, limits))
    if too_big:  # nothing else is checked (or rendered) for a job over the platform's limits
        return Checked(job, plugins.framework(job.spec.framework), too_big)
    framework = plugins.framework(job.spec.framework)
    if framework is None:
        installed = ", ".join(sorted(plugins.frameworks)) or "none (pip install mljob-pytorch, ...)"
        hint = suggestion(job.spec.framework, plugins.frameworks)
        return Checked(
            job,
            problems=[
                Problem("spec.framework", f"unknown framework {job.spec.framework!r}{hint}; installed: {installed}")
            ],
        )
    problems = list(_core_problems(job, framework, gang_may_wait))
    if problems:
        return Checked(job, framework, problems)
    try:
        problems.extend(_plugin_call(framework, "validate", lambda: framework.validate(job)))
        problems.extend(plugins.validate(job, framework))
    except PluginError as error:
        return Checked(job, framework, [Problem("", str(error))], reason=PLUGIN_ERROR)
    return Checked(job, framework, problems)


def limit_problems(job: MLJob, limits: Limits) -> Iterator[Problem]:
    """Where the job asks for more than the platform allows."""
    if limits.max_name_length < len(job.metadata.name) <= DNS_LABEL_MAX:  # longer: the DNS rule says it better
        yield Problem(
            "metadata.name",
            f"{len(job.metadata.name)} characters; this cluster allows at most {limits.max_name_length}",
        )
    total = 0
    for role, spec in job.spec.replica_specs.items():
        total += spec.replicas
        if spec.replicas > limits.max_replicas:
            yield Problem(
                f"spec.replicaSpecs.{role}.replicas",
                f"{spec.replicas} replicas; this cluster allows at most {limits.max_replicas} per role",
            )
    if total > limits.max_pods:
        yield Problem(
            "spec.replicaSpecs", f"{total} pods in all; this cluster allows at most {limits.max_pods} per job"
        )


def _plugin_call(framework: Framework, hook: str, call: Any) -> list[Problem]:
    try:
        return list(call())
    except Exception as error:
        raise PluginError(framework.name, hook, error) from error


def _core_problems(job: MLJob, framework: Framework, gang_may_wait: bool = False) -> Iterator[Problem]:
    meta = job.metadata
    if meta.generate_name:
        yield Problem("metadata.generateName", "not supported: an MLJob needs a stable metadata.name")
    if why := dns1035_problem(meta.name):
        yield Problem("metadata.name", f"{why} (it names the job's headless service)")
    else:
        yield from _pod_name_problems(job)
    if why := dns1123_problem(meta.namespace):
        yield Problem("metadata.namespace", why)
    yield from _role_problems(job, framework)
    yield from _options_problems(job, framework)
    policy = job.spec.run_policy.scheduling_policy
    total = sum(spec.replicas for spec in job.spec.replica_specs.values())
    if policy is not None and policy.min_available is not None and policy.min_available > total and not gang_may_wait:
        yield Problem(
            "spec.runPolicy.schedulingPolicy.minAvailable",
            f"{policy.min_available} is more than the job's {total} replicas",
        )
    for resource, value in ((policy.min_resources or {}) if policy is not None else {}).items():
        if (why := quantity_problem(value)) is not None:
            yield Problem(f"spec.runPolicy.schedulingPolicy.minResources.{resource}", why)
    queue = meta.labels.get(QUEUE_LABEL)
    if queue is not None and (why := dns1123_problem(queue)):
        yield Problem(f"metadata.labels.{QUEUE_LABEL}", f"{why} (it names a Kueue LocalQueue)")
    if job.spec.managed_by == MULTIKUEUE_CONTROLLER and queue is None:
        yield Problem(
            "spec.managedBy",
            f"{MULTIKUEUE_CONTROLLER} dispatches a job through Kueue: label the job {QUEUE_LABEL} with a LocalQueue "
            "whose ClusterQueue has the MultiKueue admission check",
        )


def quantity_problem(value: object) -> str | None:
    """Why ``value`` is not a Kubernetes quantity (``2``, ``500m``, ``4Gi``), or None."""
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        return f"{describe(value)} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"
    return None


def _role_problems(job: MLJob, framework: Framework) -> Iterator[Problem]:
    specs = job.spec.replica_specs
    names = [role.name for role in framework.roles]
    for role_name, spec in specs.items():
        path = f"spec.replicaSpecs.{role_name}"
        role = framework.role(role_name)
        if role is None:
            hint = difflib.get_close_matches(role_name, names, n=1, cutoff=0.5) or [
                n for n in names if n.lower() == role_name.lower()
            ]
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            yield Problem(
                path,
                f"unknown role {role_name!r} for framework {framework.name!r} (roles: {', '.join(names)}){suggestion}",
            )
            continue
        if spec.replicas < role.min_replicas:
            yield Problem(
                f"{path}.replicas",
                f"{framework.name} needs at least {role.min_replicas} {role_name}, got {spec.replicas}",
            )
        if role.max_replicas is not None and spec.replicas > role.max_replicas:
            yield Problem(
                f"{path}.replicas",
                f"{framework.name} allows at most {role.max_replicas} {role_name}, got {spec.replicas}",
            )
        yield from _template_problems(job, framework, role_name, f"{path}.template")
    for role in framework.roles:
        if role.min_replicas > 0 and role.name not in specs:
            yield Problem(
                "spec.replicaSpecs",
                f"{framework.name} needs at least {role.min_replicas} {role.name} (missing role {role.name!r})",
            )


def _pod_name_problems(job: MLJob) -> Iterator[Problem]:
    """The longest pod name must be a DNS label: ``<job>-<role>-<last index>`` within 63 characters."""
    names = [
        (pod_name(job.name, Replica(role, spec.replicas - 1)), role)
        for role, spec in job.spec.replica_specs.items()
        if spec.replicas > 0
    ]
    if not names:
        return
    longest, role = max(names, key=lambda pair: len(pair[0]))
    if len(longest) > DNS_LABEL_MAX:
        room = DNS_LABEL_MAX - (len(longest) - len(job.name))
        yield Problem(
            "metadata.name",
            f"too long for its pod names: pod {longest!r} ({role}) would be {len(longest)} characters, over the "
            f"{DNS_LABEL_MAX}-character limit of a DNS label; shorten metadata.name to at most {room} characters",
        )
    for name, role in names:
        if len(name) <= DNS_LABEL_MAX and (why := dns1123_problem(name)):
            yield Problem(f"spec.replicaSpecs.{role}", f"pod name {why}")


def _template_problems(job: MLJob, framework: Framework, role: str, path: str) -> Iterator[Problem]:
    template = job.spec.replica_specs[role].template
    schema = pod_template_problems(template, path)
    if schema:
        yield from schema
        return
    labels = (template.get("metadata") or {}).get("labels") or {}
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            yield Problem(f"{path}.metadata.labels.{key}", "labels under mljob.io/ are set by mljob; remove it")
    spec = template.get("spec")
    containers = (spec or {}).get("containers") or []
    if not containers:
        yield Problem(f"{path}.spec.containers", "at least one container is required")
        return
    for i, container in enumerate(containers):
        if not container.get("image"):
            yield Problem(f"{path}.spec.containers[{i}].image", "required field is missing: the image to run")
    index = wiring_container(containers, framework)
    if index is None:
        yield Problem(
            f"{path}.spec.containers",
            f"{len(containers)} containers and none is named {framework.container_name!r}; "
            f"name the training container {framework.container_name!r} so it gets the wiring",
        )
        return
    for j, var in enumerate(containers[index].get("env") or []):
        if var.get("name") in framework.reserved_env:
            yield Problem(
                f"{path}.spec.containers[{index}].env[{j}].name",
                f"{var['name']} is set by the {framework.name} framework; remove it",
            )


def _options_problems(job: MLJob, framework: Framework) -> Iterator[Problem]:
    model: type[BaseModel] = framework.options_model
    try:
        model.model_validate(job.spec.framework_options)
    except ValidationError as error:
        yield from pydantic_problems(error, "spec.frameworkOptions", model)


def check_text(text: str, plugins: Plugins, source: str = "<input>", limits: Limits = DEFAULT_LIMITS) -> list[Checked]:
    """Every document in ``text`` checked; a file-level problem is one ``Checked`` with no job."""
    docs, problems = load_documents(text, source)
    if problems:
        return [Checked(problems=problems)]
    return [check_document(doc, plugins, limits) for doc in docs]


def problem_lines(checked: list[Checked]) -> list[str]:
    """``path: message`` lines; prefixed with the document number when there are several."""
    lines: list[str] = []
    for n, item in enumerate(checked, start=1):
        prefix = f"document {n}: " if len(checked) > 1 else ""
        lines.extend(prefix + str(p) for p in item.problems)
    return lines
