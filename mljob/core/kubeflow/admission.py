"""What Kubeflow's validating webhooks check, as one pure function: ``review(kind, body, old)`` -> problems.

Sources, training-operator v1.9.3: ``pkg/webhooks/{tensorflow,pytorch,xgboost,jax,paddlepaddle}/*_webhook.go`` and
``pkg/common/util/webhooks.go`` (``runPolicy.managedBy``); v1.8.1's ``pkg/apis/kubeflow.org/v1/mxnet_validation.go``
for MXJob, which had no webhook (its controller ran the checks and failed the job). The messages are Kubeflow's, as
``field.Error.ErrorBody()`` writes them (``Required value: must be specified``); the paths are mljob's dotted ones:
``spec.pytorchReplicaSpecs.Master.replicas`` where Kubeflow writes ``spec.pytorchReplicaSpecs[Master].replicas``,
and ``containers[0]`` for a list item as both do.

A review runs in the API server's order. First what the server itself rejects before any webhook: the body must
fit the kind's model (:mod:`.api`) and every pod template the Kubernetes OpenAPI schema (Kubeflow's CRDs inline the
PodTemplateSpec; mljob's keep it opaque and check it here). Only a body that passes is given the webhook's checks:

* ``metadata.name`` is a DNS-1035 label (every kind);
* ``spec.runPolicy.managedBy`` is unset, ``kubeflow.org/training-operator`` or ``kueue.x-k8s.io/multikueue``, and
  on UPDATE (``old`` given) unchanged;
* the replica specs are present; each replica type is one of the kind's (:attr:`.kinds.KubeflowKind.replica_types`);
  each template has containers, each container an image, and one container has the kind's default name
  (``tensorflow``, ``pytorch``, ...);
* PyTorchJob: Master ``replicas`` is exactly 1 (unset is refused too: Kubeflow defaults it only later, in its
  controller), other replica types at least 1 where set; with ``elasticPolicy``, a Worker replica spec, and
  ``elasticPolicy.nProcPerNode`` not together with ``spec.nprocPerNode`` (alone it is a warning: :func:`warnings`);
* TFJob: at most one of the Chief and Master replica types;
* XGBoostJob: a Master replica spec, with ``replicas`` exactly 1;
* MXJob: at most one Scheduler replica type.

Where mljob is stricter than Kubeflow, on purpose:

* The body's enumerations (restartPolicy, cleanPodPolicy, successPolicy, jobMode, rdzvBackend) must be Kubeflow's
  constants; Kubeflow's CRDs take any string (a bad restart policy then fails pod creation).
* Pod templates: unknown fields are errors (Kubeflow's CRD prunes them silently).
* TFJob's and MXJob's replica types are checked too (Kubeflow's webhooks let any name through to the controller,
  which camel-cases the known ones: ``worker`` -> ``Worker``). For these two kinds the comparison ignores case, as
  that renaming does, and two replica types that differ only in case are a ``Duplicate value``.
* ``managedBy`` is checked for JAXJob (Kubeflow v1.9.3's JAX webhook checks no run policy) and MXJob (no webhook),
  and its immutability for PyTorchJob too: Kubeflow v1.9.3's PyTorch ``ValidateUpdate`` compares the new object with
  itself (``oldJob := newObj.(...)``), so it never fires there.
* MXJob's checks run at admission rather than in the controller.

Not checked here because Kubeflow's webhooks do not: a TFJob Chief's or a PaddleJob Master's ``replicas`` (mljob's
framework plugins check their own roles once the job is mapped to an MLJob).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from mljob.core.kubeflow.api import (
    API_VERSION,
    JOBS,
    KUBEFLOW_JOBS_CONTROLLER,
    MANAGED_BY_VALUES,
    KubeflowJob,
    PyTorchJobSpec,
    ReplicaSpec,
)
from mljob.core.kubeflow.kinds import KINDS, WORKER, KubeflowKind
from mljob.core.schema import pod_template_problems
from mljob.core.validation import pydantic_problems
from mljob.framework import Problem

# apimachinery's IsDNS1035Label (pkg/util/validation/validation.go), messages included.
DNS1035_MAX = 63
DNS1035_FORMAT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = re.compile(DNS1035_FORMAT)  # fullmatch: Python's `$` would also match before a final newline
DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    f"character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation "
    f"is '{DNS1035_FORMAT}')"
)

MASTER = "Master"
CASE_FOLDED = frozenset({"TFJob", "MXJob"})
"""Kinds whose replica types Kubeflow's webhooks do not check; mljob checks them ignoring case (module docstring)."""


# --- field.Error's words (k8s.io/apimachinery/pkg/util/validation/field/errors.go) ---------------------------------


def _quote(value: Any) -> str:
    """Go's ``%q`` of a string (``null`` for none), as ``field.Error`` prints a bad value."""
    return "null" if value is None else json.dumps(str(value), ensure_ascii=False)


def required(detail: str) -> str:
    return f"Required value: {detail}"


def forbidden(detail: str) -> str:
    return f"Forbidden: {detail}"


def invalid(value: Any, detail: str) -> str:
    return f"Invalid value: {_quote(value)}: {detail}"


def not_supported(value: Any, supported: tuple[str, ...]) -> str:
    return f"Unsupported value: {_quote(value)}: supported values: {', '.join(_quote(v) for v in supported)}"


def duplicate(value: Any) -> str:
    return f"Duplicate value: {_quote(value)}"


# --- the public functions -------------------------------------------------------------------------------------------


def review(kind: str, body: Any, old: Any = None) -> list[Problem]:
    """Every reason Kubeflow (and mljob, where stricter: the module's docstring) would refuse ``body``.

    ``kind`` is the kind the request is for (``TFJob``); ``old`` the stored object on UPDATE, None on CREATE.
    """
    facts = KINDS.get(kind)
    if facts is None:
        return [Problem("kind", f"{kind!r} is not a Kubeflow kind mljob serves ({', '.join(KINDS)})")]
    job, problems = _parse(facts, body)
    if job is None:
        return problems
    old_job = _old(facts, old)
    return list(_webhook(facts, job, old_job))


def warnings(kind: str, body: Any) -> list[str]:
    """What Kubeflow's webhook answers with a warning, not a refusal (a deprecated field); and, mljob's own, an
    elastic policy's HPA ``metrics``, which make no autoscaler here."""
    facts = KINDS.get(kind)
    if facts is None or facts.kind != "PyTorchJob":
        return []
    try:
        job = JOBS[facts.kind].model_validate({k: v for k, v in body.items() if k != "status"})
    except (ValidationError, AttributeError):
        return []
    elastic = job.spec.elastic_policy if isinstance(job.spec, PyTorchJobSpec) else None
    found = []
    if elastic is not None and elastic.n_proc_per_node is not None:
        found.append("spec.elasticPolicy.nProcPerNode is deprecated, use spec.nprocPerNode instead")
    if elastic is not None and elastic.metrics:  # mljob's own word: Kubeflow creates the HPA
        found.append(
            "spec.elasticPolicy.metrics: mljob creates no HorizontalPodAutoscaler; create your own with "
            "scaleTargetRef this PyTorchJob (its scale subresource), within minReplicas and maxReplicas"
        )
    return found


def managed_elsewhere(body: Mapping[str, Any] | KubeflowJob) -> bool:
    """Whether another controller reconciles the job: ``runPolicy.managedBy`` set to anything but
    ``kubeflow.org/training-operator`` (MultiKueue's jobs run on a worker cluster; here they are left alone)."""
    if isinstance(body, KubeflowJob):
        managed = body.spec.run_policy.managed_by if body.spec is not None else None
    else:
        spec = body.get("spec") if isinstance(body, Mapping) else None
        run = spec.get("runPolicy") if isinstance(spec, Mapping) else None
        managed = run.get("managedBy") if isinstance(run, Mapping) else None
    return managed is not None and managed != KUBEFLOW_JOBS_CONTROLLER


def dns1035_errors(name: str) -> list[str]:
    """apimachinery's ``IsDNS1035Label``: its messages, none for a good name."""
    errors = []
    if len(name) > DNS1035_MAX:
        errors.append(f"must be no more than {DNS1035_MAX} characters")
    if not _DNS1035.fullmatch(name):
        errors.append(DNS1035_MESSAGE)
    return errors


# --- what the API server checks before any webhook -------------------------------------------------------------------


def _parse(facts: KubeflowKind, body: Any) -> tuple[KubeflowJob | None, list[Problem]]:
    if not isinstance(body, Mapping):
        return None, [Problem("", f"a {facts.kind} is a mapping, got {type(body).__name__}")]
    problems = []
    if body.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}, got {_quote(body.get('apiVersion'))}"))
    if body.get("kind") != facts.kind:
        problems.append(Problem("kind", f"must be {facts.kind}, got {_quote(body.get('kind'))}"))
    if problems:
        return None, problems
    model = JOBS[facts.kind]
    # The status subresource: a create or update of the object itself ignores its status, so no check does.
    fields = {key: value for key, value in body.items() if key != "status"}
    try:
        job = model.model_validate(fields)
    except ValidationError as error:
        return None, pydantic_problems(error, model=model)
    problems = [
        problem
        for role, spec in _specs(job)
        if spec.template is not None
        for problem in pod_template_problems(spec.template, f"{_specs_path(facts)}.{role}.template")
    ]
    return (None, problems) if problems else (job, [])


def _old(facts: KubeflowKind, old: Any) -> KubeflowJob | None:
    """The stored object, parsed leniently: only its run policy is compared."""
    if old is None:
        return None
    try:
        return JOBS[facts.kind].model_validate({k: v for k, v in old.items() if k != "status"})
    except (ValidationError, AttributeError):
        return None


# --- the webhook ------------------------------------------------------------------------------------------------------


def _webhook(facts: KubeflowKind, job: KubeflowJob, old: KubeflowJob | None) -> Iterator[Problem]:
    if errors := dns1035_errors(job.name):
        yield Problem("metadata.name", invalid(job.name, f"should match: {','.join(errors)}"))
    managed = job.spec.run_policy.managed_by if job.spec is not None else None
    if old is not None:
        before = old.spec.run_policy.managed_by if old.spec is not None else None
        if before != managed:
            yield Problem("spec.runPolicy.managedBy", invalid(managed, "field is immutable"))
    if managed is not None and managed not in MANAGED_BY_VALUES:
        yield Problem("spec.runPolicy.managedBy", not_supported(managed, MANAGED_BY_VALUES))
    if isinstance(job.spec, PyTorchJobSpec):
        yield from _elastic(job.spec)
    yield from _replica_specs(facts, job)


def _elastic(spec: PyTorchJobSpec) -> Iterator[Problem]:
    if spec.elastic_policy is None:
        return
    if WORKER not in spec.pytorch_replica_specs:
        yield Problem(f"spec.pytorchReplicaSpecs.{WORKER}", required("must be configured if elastic policy is used"))
    if spec.elastic_policy.n_proc_per_node is not None and spec.nproc_per_node is not None:
        yield Problem("spec.elasticPolicy.nProcPerNode", forbidden("must not be used with spec.nprocPerNode"))


def _replica_specs(facts: KubeflowKind, job: KubeflowJob) -> Iterator[Problem]:
    specs_path = _specs_path(facts)
    if job.spec is None:
        yield Problem(specs_path, required("must be required"))
        return
    specs = job.spec.replica_specs
    folded = facts.kind in CASE_FOLDED
    seen: dict[str, str] = {}
    for role, spec in specs.items():
        path = f"{specs_path}.{role}"
        yield from _replica_type(facts, role, path, seen)
        yield from _containers(facts, spec, f"{path}.template.spec.containers")
        if facts.kind == "PyTorchJob" and role == MASTER:
            if spec.replicas != 1:
                yield Problem(f"{path}.replicas", forbidden("must be 1"))
        elif facts.kind == "PyTorchJob" and spec.replicas is not None and spec.replicas < 1:
            yield Problem(f"{path}.replicas", forbidden("must be at least 1"))
        if facts.kind == "XGBoostJob" and role == MASTER and spec.replicas != 1:
            yield Problem(f"{path}.replicas", forbidden("must be 1"))
    types = [role.lower() if folded else role for role in specs]
    if facts.kind == "TFJob" and sum(t in ("chief", "master") for t in types) > 1:
        yield Problem(specs_path, forbidden("must not have more than 1 Chief or Master role"))
    if facts.kind == "MXJob" and types.count("scheduler") > 1:
        yield Problem(specs_path, forbidden("must not have more than 1 Scheduler role"))
    if facts.kind == "XGBoostJob" and MASTER not in specs:
        yield Problem(f"{specs_path}.{MASTER}", required("must be present"))


def _replica_type(facts: KubeflowKind, role: str, path: str, seen: dict[str, str]) -> Iterator[Problem]:
    if facts.kind not in CASE_FOLDED:
        if role not in facts.replica_types:
            yield Problem(path, not_supported(role, facts.replica_types))
        return
    if role.lower() not in {t.lower() for t in facts.replica_types}:
        yield Problem(path, not_supported(role, facts.replica_types))
    elif role.lower() in seen:
        yield Problem(path, duplicate(role) + f": the same replica type as {_quote(seen[role.lower()])}")
    seen.setdefault(role.lower(), role)


def _containers(facts: KubeflowKind, spec: ReplicaSpec, path: str) -> Iterator[Problem]:
    pod = (spec.template or {}).get("spec") or {}
    containers = [c for c in pod.get("containers") or [] if isinstance(c, Mapping)]
    if not containers:
        yield Problem(path, required("must be specified"))
    for index, container in enumerate(containers):
        if not container.get("image"):
            yield Problem(f"{path}[{index}].image", required("must be required"))
    if not any(container.get("name") == facts.container_name for container in containers):
        name = json.dumps(facts.container_name) if facts.kind == "PaddleJob" else facts.container_name
        yield Problem(path, required(f"must have at least one container with name {name}"))


def _specs(job: KubeflowJob) -> list[tuple[str, ReplicaSpec]]:
    return list(job.spec.replica_specs.items()) if job.spec is not None else []


def _specs_path(facts: KubeflowKind) -> str:
    return f"spec.{facts.replica_specs_field}"
