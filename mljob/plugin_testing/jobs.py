"""Building jobs and clusters for a plugin's tests: :func:`make_job`, :func:`job_shapes`, :class:`FakeCluster`.

Everything here is plain data in, plain data out, so a plugin's own tests can use it as freely as
the contracts in :mod:`mljob.plugin_testing.contract` and :mod:`mljob.plugin_testing.hooks` do.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Literal

from mljob.api import API_VERSION, KIND, MLJob
from mljob.framework import Address, Cluster, Framework, Replica, replicas_of
from mljob.hookspecs import hookimpl
from mljob.plugins import Plugins, load_plugins

FAKE_DOMAIN = "fake-cluster.invalid"
"""Host names of :class:`FakeCluster` end here (``.invalid`` can never resolve)."""
FAKE_NETWORK = "198.18"
"""IP addresses of :class:`FakeCluster` are in 198.18.0.0/15, reserved for benchmarks (RFC 2544)."""
_FAKE_HOST = re.compile(r"[A-Za-z0-9.-]*" + re.escape("." + FAKE_DOMAIN))
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")

SHAPE_COUNTS = (1, 3)
"""The replica counts :func:`job_shapes` tries for each role (within the role's bounds), besides leaving it out."""
MAX_SHAPES = 48
"""At most this many shapes per base job: an even spread over every combination, first and last included."""


def make_job(
    framework: Framework,
    roles: Mapping[str, int | Mapping[str, Any]],
    *,
    options: Mapping[str, Any] | None = None,
    name: str = "job",
    namespace: str = "default",
    ports: Mapping[str, int] | None = None,
    env: Mapping[str, Mapping[str, str]] | None = None,
    annotations: Mapping[str, Mapping[str, str]] | None = None,
    image: str = "busybox",
    job_annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    run_policy: Mapping[str, Any] | None = None,
) -> MLJob:
    """An :class:`MLJob` for ``framework`` in one line, for tests.

    :param roles: role -> replica count, or role -> a replica spec in wire form (camelCase) whose
        missing ``template`` is filled in.
    :param ports: role -> a container port named ``framework.port_name`` (overrides the default).
    :param env: role -> variables the user sets in the wiring container.
    :param annotations: role -> pod template annotations.
    :param job_annotations: the MLJob's own ``metadata.annotations`` (what cross-cutting plugins read).
    :param labels: the MLJob's ``metadata.labels``.
    :param run_policy: ``spec.runPolicy`` in wire form.
    """
    specs: dict[str, Any] = {}
    for role, value in roles.items():
        spec: dict[str, Any] = {"replicas": value} if isinstance(value, int) else dict(value)
        if "template" not in spec:
            spec["template"] = _template(framework, role, image, ports, env, annotations)
        specs[role] = spec
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if job_annotations:
        metadata["annotations"] = dict(job_annotations)
    if labels:
        metadata["labels"] = dict(labels)
    spec_doc: dict[str, Any] = {
        "framework": framework.name,
        "replicaSpecs": specs,
        "frameworkOptions": dict(options or {}),
    }
    if run_policy:
        spec_doc["runPolicy"] = dict(run_policy)
    return MLJob.model_validate({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec_doc})


def _template(
    framework: Framework,
    role: str,
    image: str,
    ports: Mapping[str, int] | None,
    env: Mapping[str, Mapping[str, str]] | None,
    annotations: Mapping[str, Mapping[str, str]] | None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": framework.container_name, "image": image}
    if ports and role in ports:
        if not framework.port_name:
            raise ValueError(f"framework {framework.name!r} has no port_name, so a port cannot override its default")
        container["ports"] = [{"name": framework.port_name, "containerPort": ports[role], "protocol": "TCP"}]
    if env and role in env:
        container["env"] = [{"name": key, "value": value} for key, value in env[role].items()]
    template: dict[str, Any] = {"spec": {"containers": [container]}}
    if annotations and role in annotations:
        template["metadata"] = {"annotations": dict(annotations[role])}
    return template


def wire(job: MLJob) -> dict[str, Any]:
    """The job as a user writes it (camelCase, unset fields left out), to change and validate again."""
    return job.model_dump(mode="json", by_alias=True, exclude_none=True)


def job_shapes(framework: Framework, base: MLJob, *, limit: int = MAX_SHAPES) -> list[MLJob]:
    """Jobs like ``base`` — its names, options, run policy and templates — in many shapes.

    Each role of the framework is left out (when it may be) or given each of :data:`SHAPE_COUNTS`
    replicas, clamped to its bounds. Not every shape is valid: the framework's own rules (one
    chief under either name, say) are not known here, so callers keep the ones ``check_job``
    accepts. A role that ``base`` has keeps its replica spec (template, restart policy).
    """
    choices: list[list[int]] = []
    for role in framework.roles:
        allowed: set[int] = {0} if role.min_replicas == 0 else set()
        for count in SHAPE_COUNTS:
            count = max(count, role.min_replicas)
            allowed.add(count if role.max_replicas is None else min(count, role.max_replicas))
        choices.append(sorted(allowed))
    combinations = [c for c in itertools.product(*choices) if any(c)]
    if len(combinations) > limit:
        step = (len(combinations) - 1) / (limit - 1)
        combinations = [combinations[round(i * step)] for i in range(limit)]
    doc = wire(base)
    specs = doc["spec"]["replicaSpecs"]
    order = [*specs, *(r.name for r in framework.roles if r.name not in specs)]
    shapes: list[MLJob] = []
    for combination in combinations:
        counts = {r.name: n for r, n in zip(framework.roles, combination, strict=True) if n}
        shaped: dict[str, Any] = {}
        for name in order:
            if name in counts:
                spec = dict(specs.get(name) or {"template": _template(framework, name, "busybox", None, None, None)})
                shaped[name] = {**spec, "replicas": counts[name]}
        shaped_doc = {**doc, "spec": {**doc["spec"], "replicaSpecs": shaped}}
        shapes.append(MLJob.model_validate(shaped_doc))
    return shapes


class _Registers:
    """A plugin object that registers frameworks, so a test needs no module or entry point."""

    def __init__(self, *frameworks: Framework) -> None:
        self.frameworks = frameworks

    @hookimpl
    def mljob_register_frameworks(self, register: Callable[[Framework], None]) -> None:
        for framework in self.frameworks:
            register(framework)


def plugins_for(*frameworks: Framework, extra: Iterable[object] = ()) -> Plugins:
    """Plugins holding exactly ``frameworks`` and the ``extra`` plugin objects or modules (no entry points).

    For ``check_job`` and ``render`` in tests: ``plugins_for(MyFramework())`` checks a job as the
    operator would with only your framework installed; ``extra=[my_plugin_module]`` adds a
    cross-cutting plugin beside it.
    """
    return load_plugins(entry_points=False, extra=[*(_Registers(f) for f in frameworks), *extra])


class FakeCluster:
    """A :class:`~mljob.Cluster` with odd, recognisable addresses that records every question.

    ``style="dns"`` gives names like ``n3-worker1.fake-cluster.invalid`` (as in a Kubernetes
    cluster); ``style="ip"`` gives addresses in 198.18.0.0/15 (as in a local run). Every replica
    gets its own port, as in a local run where all replicas share one host.
    """

    def __init__(self, job: MLJob, *, style: Literal["dns", "ip"] = "dns", first_port: int = 40101) -> None:
        self.job = job
        self.style = style
        self.asked: list[Replica] = []
        self._addresses: dict[Replica, Address] = {}
        for n, replica in enumerate(replicas_of(job)):
            if style == "dns":
                host = f"n{n}-{replica.role.lower()}{replica.index}.{FAKE_DOMAIN}"
            else:
                host = f"{FAKE_NETWORK}.{(n + 1) // 256}.{(n + 1) % 256}"
            self._addresses[replica] = Address(host, 1024 + (first_port - 1024 + 7 * n) % 64000)

    def address(self, replica: Replica) -> Address:
        self.asked.append(replica)
        try:
            return self._addresses[replica]
        except KeyError:
            raise KeyError(f"{replica} is not a replica of job {self.job.name!r}") from None

    def handed_out(self) -> set[Address]:
        """The addresses the framework asked for so far."""
        return {self._addresses[r] for r in self.asked}

    def hosts_in(self, text: str) -> list[str]:
        """Every host of this cluster's style that occurs in ``text``."""
        return (_FAKE_HOST if self.style == "dns" else _IPV4).findall(text)


def loopback_cluster(job: MLJob) -> Cluster:
    """127.0.0.1 and a free port per replica, exactly as ``mljob run`` wires a job.

    For a plugin's real-training test: start one process per replica with ``framework.env(job,
    replica, loopback_cluster(job))`` and check the framework's own library connects them.
    """
    from mljob.local.cluster import LocalCluster

    return LocalCluster.allocate(replicas_of(job))


# -- field paths ----------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")
_METADATA_MAPS = {"labels", "annotations"}
"""``metadata`` fields whose keys are free (and may hold dots and slashes: ``example.com/team``)."""


@cache
def _schema() -> tuple[dict[str, Any], dict[str, Any]]:
    schema = MLJob.model_json_schema(by_alias=True)
    return schema, schema.get("$defs", {})


def _resolve(node: Any, defs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``node`` with ``$ref`` followed and ``X | None`` unfolded: the schemas the value may have."""
    if not isinstance(node, dict):
        return [{}] if node is True else []
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        return [s for option in node["anyOf"] if option.get("type") != "null" for s in _resolve(option, defs)]
    return [node]


def field_path_problem(path: str) -> str | None:
    """Why ``path`` is not a field path into an MLJob as its user writes it; None when it is one.

    A field path names what to fix in the user's file: wire names (``spec.frameworkOptions``, not
    ``spec.framework_options``), ``[i]`` for list items, map keys as written
    (``spec.replicaSpecs.Worker``, ``metadata.annotations.example.com/team``). Below a pod
    template or ``frameworkOptions``, which the MLJob schema leaves open, anything goes.
    """
    if not path:
        return "the path is empty: name the field the user must change (spec.replicaSpecs.Worker.replicas, ...)"
    schema, defs = _schema()
    nodes = [schema]
    rest = path
    walked: list[str] = []
    while rest:
        match = _SEGMENT.match(rest)
        if match is None or (walked and rest[0] not in ".[") or (not walked and rest[0] in ".["):
            return f"{path!r} is not a field path (dotted names and [index], e.g. spec.replicaSpecs.Worker.replicas)"
        name, index = match.group(1), match.group(2)
        if walked == ["metadata"] and name in _METADATA_MAPS:
            return None  # labels and annotations: the rest is a key, dots and slashes included
        following: list[dict[str, Any]] = []
        for node in nodes:
            if index is not None:
                if node.get("type") == "array":
                    following += _resolve(node.get("items", {}), defs)
            elif "properties" in node:
                if name in node["properties"]:
                    following += _resolve(node["properties"][name], defs)
            elif node.get("type") == "object" or not node:
                extra = node.get("additionalProperties", True)
                if extra is True or not node:
                    return None  # an open object (a pod template, frameworkOptions): anything below is the user's
                following += _resolve(extra, defs)
        if not following:
            where = ".".join(walked) or "the MLJob"
            what = f"[{index}]" if index is not None else repr(name)
            known = sorted(p for node in nodes for p in node.get("properties", {}))
            hint = f"; fields there: {', '.join(known)}" if known else ""
            return f"{path!r}: {where} has no {what}{hint}"
        nodes = following
        walked.append(name if name is not None else f"[{index}]")
        rest = rest[match.end() :]
    return None


def problems_outside_fields(problems: Sequence[Any]) -> list[str]:
    """``path: why`` for every problem whose path is not a field path (see :func:`field_path_problem`)."""
    return [f"{p}  <- {why}" for p in problems if (why := field_path_problem(p.path))]
