"""Turning a document into a checked MLJob, or into every problem with its field path.

One function answers for the CLI (``mljob validate``), the local runtime and the operator, so a
job rejected in one place is rejected with the same words everywhere. Nothing here raises on bad
input: problems are data. A plugin that raises becomes a ``PluginError`` problem for that job only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mljob.api import API_VERSION, KIND, MLJob
from mljob.framework import Framework, Problem, Replica
from mljob.k8sschema import json_path, pod_template_problems
from mljob.names import RESERVED_LABEL_PREFIX, dns1035_problem, dns1123_problem, pod_name
from mljob.plugins import PluginError, Plugins
from mljob.render import wiring_container

INVALID_SPEC = "InvalidSpec"
PLUGIN_ERROR = "PluginError"


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


def load_documents(text: str, source: str = "<input>") -> tuple[list[Any], list[Problem]]:
    """The YAML documents in ``text`` (empty ones dropped), or the syntax error with its line."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(error, "problem", None) or str(error)
        return [], [Problem("", f"{source}: YAML syntax error at {where}: {problem}")]
    if not docs:
        return [], [Problem("", f"{source}: the file is empty; expected an MLJob (apiVersion: {API_VERSION})")]
    return docs, []


def pydantic_problems(error: ValidationError, prefix: str = "") -> list[Problem]:
    """Pydantic's errors as ``path: message``, with the user's value where it helps."""
    problems = []
    for item in error.errors(include_url=False):
        path = json_path(prefix, item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error" and item["loc"] == ("apiVersion",):
            message = f"must be {API_VERSION}, got {item['input']!r}"
        elif kind == "literal_error" and item["loc"] == ("kind",):
            message = f"must be {KIND}, got {item['input']!r}"
        elif kind in ("enum", "literal_error", "int_type", "bool_type", "string_type", "greater_than_equal"):
            message = f"{item['msg']}, got {item['input']!r}"
        else:
            message = item["msg"]
        problems.append(Problem(path, message))
    return problems


def parse_job(doc: Any) -> tuple[MLJob | None, list[Problem]]:
    """Parse one document into the API model; a non-mapping or a schema mismatch is a problem."""
    if not isinstance(doc, dict):
        return None, [Problem("", f"the document is a {type(doc).__name__}, expected a mapping (an MLJob object)")]
    try:
        return MLJob.model_validate(doc), []
    except ValidationError as error:
        return None, pydantic_problems(error)


def check_document(doc: Any, plugins: Plugins) -> Checked:
    """Parse and fully check one document."""
    job, problems = parse_job(doc)
    if job is None:
        return Checked(problems=problems)
    return check_job(job, plugins)


def check_job(job: MLJob, plugins: Plugins) -> Checked:
    """Every problem with an already-parsed job: names, roles, templates, wiring, options, plugins."""
    framework = plugins.framework(job.spec.framework)
    if framework is None:
        installed = ", ".join(sorted(plugins.frameworks)) or "none (pip install mljob-pytorch, ...)"
        return Checked(
            job,
            problems=[Problem("spec.framework", f"unknown framework {job.spec.framework!r}; installed: {installed}")],
        )
    problems = list(_core_problems(job, framework))
    if problems:
        return Checked(job, framework, problems)
    try:
        problems.extend(_plugin_call(framework, "validate", lambda: framework.validate(job)))
        problems.extend(plugins.validate(job, framework))
    except PluginError as error:
        return Checked(job, framework, [Problem("", str(error))], reason=PLUGIN_ERROR)
    return Checked(job, framework, problems)


def _plugin_call(framework: Framework, hook: str, call: Any) -> list[Problem]:
    try:
        return list(call())
    except Exception as error:
        raise PluginError(framework.name, hook, error) from error


def _core_problems(job: MLJob, framework: Framework) -> Iterator[Problem]:
    meta = job.metadata
    if meta.generate_name:
        yield Problem("metadata.generateName", "not supported: an MLJob needs a stable metadata.name")
    if why := dns1035_problem(meta.name):
        yield Problem("metadata.name", f"{why} (it names the job's headless service)")
    yield from _role_problems(job, framework)
    yield from _options_problems(job, framework)
    policy = job.spec.run_policy.scheduling_policy
    total = sum(spec.replicas for spec in job.spec.replica_specs.values())
    if policy is not None and policy.min_available is not None and policy.min_available > total:
        yield Problem(
            "spec.runPolicy.schedulingPolicy.minAvailable",
            f"{policy.min_available} is more than the job's {total} replicas",
        )


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
        if spec.replicas > 0:
            last = pod_name(job.name, Replica(role_name, spec.replicas - 1))
            if why := dns1123_problem(last):
                yield Problem(path, f"pod name {why}; shorten metadata.name")
        yield from _template_problems(job, framework, role_name, f"{path}.template")
    for role in framework.roles:
        if role.min_replicas > 0 and role.name not in specs:
            yield Problem(
                "spec.replicaSpecs",
                f"{framework.name} needs at least {role.min_replicas} {role.name} (missing role {role.name!r})",
            )


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
            yield Problem(f"{path}.spec.containers[{i}].image", "required: the image the container runs")
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
        yield from pydantic_problems(error, "spec.frameworkOptions")


def check_text(text: str, plugins: Plugins, source: str = "<input>") -> list[Checked]:
    """Every document in ``text`` checked; a file-level problem is one ``Checked`` with no job."""
    docs, problems = load_documents(text, source)
    if problems:
        return [Checked(problems=problems)]
    return [check_document(doc, plugins) for doc in docs]


def problem_lines(checked: list[Checked]) -> list[str]:
    """``path: message`` lines; prefixed with the document number when there are several."""
    lines: list[str] = []
    for n, item in enumerate(checked, start=1):
        prefix = f"document {n}: " if len(checked) > 1 else ""
        lines.extend(prefix + str(p) for p in item.problems)
    return lines
