"""``mljob convert``: a Kubeflow TFJob, PyTorchJob, MXJob, XGBoostJob, JAXJob, PaddleJob or MPIJob becomes the
equivalent MLJob. Pure. The operator's Kubeflow front door (:mod:`mljob.core.kubeflow.door`) maps the objects it
serves the same way.

Formats, from Kubeflow's training-operator API (``kubeflow.org/v1``) and its oldest TFJob (``v1alpha1``):

* v1: ``spec.{tf,pytorch,mx,xgb,jax,paddle}ReplicaSpecs`` (role -> replicas, restartPolicy, template) and
  ``spec.runPolicy`` (cleanPodPolicy, ttlSecondsAfterFinished, activeDeadlineSeconds, backoffLimit,
  schedulingPolicy, suspend); releases before runPolicy kept those four at ``spec`` level, and both are read.
  TFJob's ``successPolicy``, PyTorchJob's ``nprocPerNode`` and its ``elasticPolicy`` become ``frameworkOptions``;
  an elastic policy's bounds are written out as Kubeflow's defaulter stores them (one given, the other the same;
  neither, both the Worker count), its HPA ``metrics`` are named (mljob creates no autoscaler: the job's scale
  subresource is there for the user's own) and so is ``standalone: true`` (a rendezvous in every pod).
* MPIJob, the MPI Operator's ``v2beta1`` or training-operator's ``v1``: ``spec.mpiReplicaSpecs`` (Launcher, Worker);
  ``slotsPerWorker``, ``launcherCreationPolicy``, ``mpiImplementation`` and ``sshAuthMountPath`` become the MPI
  plugin's ``frameworkOptions``; v1's spec-level ``cleanPodPolicy`` is read like the other spec-level policies.
* v1alpha1 TFJob: ``spec.replicaSpecs`` is a list of ``{replicas, tfReplicaType: MASTER|PS|WORKER, template}``;
  MASTER is the chief.

Role names are matched case-insensitively to the framework's own (Kubeflow accepts ``worker`` for ``Worker``).
Whatever has no MLJob equivalent is dropped and named, with its field path, in :attr:`Converted.dropped`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mljob.api import API_VERSION, KIND
from mljob.core.kubeflow.kinds import KINDS as KUBEFLOW
from mljob.core.kubeflow.kinds import MPIJOB
from mljob.framework import Problem

KUBEFLOW_GROUP = "kubeflow.org"
KINDS = {k.kind: (k.framework, k.replica_specs_field) for k in (*KUBEFLOW.values(), MPIJOB)}
"""Kind -> (the framework it maps to, its replica-specs field), from the facts of :mod:`mljob.core.kubeflow.kinds`."""
ROLES = {
    "tensorflow": ("Chief", "Master", "PS", "Worker", "Evaluator"),
    "pytorch": ("Master", "Worker"),
    "mxnet": ("Scheduler", "Server", "Worker"),
    "xgboost": ("Master", "Worker"),
    "jax": ("Worker",),
    "paddle": ("Master", "Worker"),
    "mpi": ("Launcher", "Worker"),
}
MPI_OPTIONS = ("slotsPerWorker", "launcherCreationPolicy", "mpiImplementation", "sshAuthMountPath")
"""An MPIJob's (v2beta1, and v1's ``slotsPerWorker``) spec fields that are the MPI plugin's ``frameworkOptions``."""
V1ALPHA1_TYPES = {"MASTER": "Chief", "PS": "PS", "WORKER": "Worker"}
RUN_POLICY = ("cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit")
SCHEDULING = ("minAvailable", "queue", "minResources", "priorityClass", "scheduleTimeoutSeconds")
KEPT_METADATA = ("name", "namespace", "labels", "annotations")


@dataclass
class Converted:
    """The MLJob, what was left behind (each with its path in the Kubeflow file), or why nothing came out."""

    job: dict[str, Any] | None = None
    dropped: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def convert(doc: Any) -> Converted:
    """One Kubeflow document as an MLJob document (checked by the caller like any other)."""
    if not isinstance(doc, Mapping):
        return Converted(problems=[Problem("", "the document is not a mapping")])
    kind, api_version = doc.get("kind"), str(doc.get("apiVersion") or "")
    if kind not in KINDS or not api_version.startswith(f"{KUBEFLOW_GROUP}/"):
        known = ", ".join(f"{KUBEFLOW_GROUP}/{'v2beta1 or v1' if k == MPIJOB.kind else 'v1'} {k}" for k in KINDS)
        return Converted(problems=[Problem("kind", f"not a Kubeflow job ({api_version} {kind}); converts {known}")])
    framework, specs_field = KINDS[str(kind)]
    out = Converted()
    spec = doc.get("spec") or {}
    if not isinstance(spec, Mapping):
        return Converted(problems=[Problem("spec", "must be a mapping")])
    meta = doc.get("metadata") or {}
    metadata = {key: meta[key] for key in KEPT_METADATA if key in meta}
    job_spec: dict[str, Any] = {"framework": framework}
    job: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": job_spec}
    if "status" in doc:
        out.dropped.append(Problem("status", "the Kubeflow operator's status: the MLJob operator writes its own"))

    if api_version == f"{KUBEFLOW_GROUP}/v1alpha1" and isinstance(spec.get("replicaSpecs"), list):
        job_spec["replicaSpecs"] = _v1alpha1_roles(spec, out)
        handled = {"replicaSpecs", "terminationPolicy"}
    else:
        job_spec["replicaSpecs"] = _roles(framework, specs_field, spec.get(specs_field), out)
        handled = {specs_field}
    run_policy = _run_policy(spec, out)
    if run_policy:
        job_spec["runPolicy"] = run_policy
    handled |= {"runPolicy", *RUN_POLICY}
    options, seen = _options(framework, spec, out, job_spec["replicaSpecs"])
    if options:
        job_spec["frameworkOptions"] = options
    handled |= seen
    for key in sorted(set(spec) - handled):
        out.dropped.append(Problem(f"spec.{key}", f"{kind}'s {key} has no MLJob equivalent"))
    out.job = job
    return out


def _role_name(framework: str, name: str) -> str | None:
    return next((role for role in ROLES[framework] if role.lower() == str(name).lower()), None)


def _replica(path: str, value: Any, out: Converted) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        out.problems.append(Problem(path, "must be a mapping with replicas, restartPolicy and template"))
        return None
    replica: dict[str, Any] = {"replicas": value.get("replicas", 1)}
    if "restartPolicy" in value:
        replica["restartPolicy"] = value["restartPolicy"]
    template = value.get("template")
    if isinstance(template, Mapping):
        template = copy.deepcopy(dict(template))
        pod = template.get("spec")
        if isinstance(pod, dict) and "restartPolicy" in pod:  # v1alpha1 put it on the pod: it is the replica's
            moved = pod.pop("restartPolicy")
            replica.setdefault("restartPolicy", moved)
    if template is not None:
        replica["template"] = template
    for key in sorted(set(value) - {"replicas", "restartPolicy", "template"}):
        out.dropped.append(Problem(f"{path}.{key}", "has no MLJob equivalent"))
    return replica


def _roles(framework: str, specs_field: str, specs: Any, out: Converted) -> dict[str, Any]:
    if not isinstance(specs, Mapping) or not specs:
        out.problems.append(Problem(f"spec.{specs_field}", "missing: a Kubeflow job needs its replica specs"))
        return {}
    roles: dict[str, Any] = {}
    for name, value in specs.items():
        path = f"spec.{specs_field}.{name}"
        role = _role_name(framework, name)
        if role is None:
            out.dropped.append(
                Problem(path, f"role {name!r} has no {framework} MLJob role ({', '.join(ROLES[framework])})")
            )
            continue
        replica = _replica(path, value, out)
        if replica is not None:
            roles[role] = replica
    return roles


def _v1alpha1_roles(spec: Mapping[str, Any], out: Converted) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for i, value in enumerate(spec["replicaSpecs"]):
        path = f"spec.replicaSpecs[{i}]"
        kind = str((value or {}).get("tfReplicaType") or "MASTER").upper() if isinstance(value, Mapping) else ""
        role = V1ALPHA1_TYPES.get(kind)
        if role is None:
            out.dropped.append(Problem(f"{path}.tfReplicaType", f"{kind!r} has no TensorFlow MLJob role"))
            continue
        plain = {k: v for k, v in value.items() if k not in ("tfReplicaType", "tfPort", "tfImage")}
        for extra in ("tfPort", "tfImage"):
            if extra in value:
                why = "the port comes from the container's ports (or 2222)" if extra == "tfPort" else "set the image"
                out.dropped.append(Problem(f"{path}.{extra}", f"no MLJob equivalent: {why} in the template"))
        replica = _replica(path, plain, out)
        if replica is not None:
            roles[role] = replica
    chief = ((spec.get("terminationPolicy") or {}).get("chief") or {}) if isinstance(spec, Mapping) else {}
    name, index = str(chief.get("replicaName") or "MASTER").upper(), int(chief.get("replicaIndex") or 0)
    if (name, index) not in (("MASTER", 0), ("WORKER", 0)) or (name == "WORKER" and "Chief" in roles):
        out.dropped.append(
            Problem(
                "spec.terminationPolicy.chief",
                f"{name} {index} as the chief: the MLJob chief is the Chief, else worker 0",
            )
        )
    return roles


def _run_policy(spec: Mapping[str, Any], out: Converted) -> dict[str, Any]:
    given = spec.get("runPolicy") or {}
    policy: dict[str, Any] = {}
    for key in RUN_POLICY:  # the older releases' spec-level fields, then runPolicy's
        if key in spec:
            policy[key] = spec[key]
    for key, value in given.items():
        path = f"spec.runPolicy.{key}"
        if key in RUN_POLICY or key == "suspend":
            policy[key] = value
        elif key == "schedulingPolicy" and isinstance(value, Mapping):
            scheduling = {k: v for k, v in value.items() if k in SCHEDULING}
            for extra in sorted(set(value) - set(SCHEDULING)):
                out.dropped.append(Problem(f"{path}.{extra}", "has no MLJob equivalent"))
            if scheduling:
                policy["schedulingPolicy"] = scheduling
        else:
            out.dropped.append(Problem(path, "has no MLJob equivalent"))
    return policy


def _options(
    framework: str, spec: Mapping[str, Any], out: Converted, roles: Mapping[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    options: dict[str, Any] = {}
    seen: set[str] = set()
    if framework == "tensorflow" and "successPolicy" in spec:
        seen.add("successPolicy")
        options["successPolicy"] = spec["successPolicy"]
    if framework == "pytorch":
        elastic = spec.get("elasticPolicy")
        if "elasticPolicy" in spec and elastic is None:
            seen.add("elasticPolicy")  # null: no policy, as Kubeflow reads it
        if isinstance(elastic, Mapping):
            seen.add("elasticPolicy")
            options["elasticPolicy"] = _elastic_policy(elastic, roles, out)
        if "nprocPerNode" in spec:
            seen.add("nprocPerNode")
            options["nprocPerNode"] = spec["nprocPerNode"]
    if framework == "mpi":
        for key in MPI_OPTIONS:
            if key in spec:
                seen.add(key)
                options[key] = spec[key]
        if "runLauncherAsWorker" in spec:
            seen.add("runLauncherAsWorker")
            if spec["runLauncherAsWorker"] is not False:
                why = "the launcher as a worker too has no MLJob equivalent: give the Worker replicas every slot"
                out.dropped.append(Problem("spec.runLauncherAsWorker", why))
        if "mainContainer" in spec:  # v1: the container kubectl exec ran in; mljob's wiring goes to the first
            seen.add("mainContainer")
            containers = _launcher_containers(spec)
            if containers and containers[0] != spec["mainContainer"]:
                main = spec["mainContainer"]
                why = f"the MPI plugin wires the first container ({containers[0]!r}): put {main!r} first"
                out.dropped.append(Problem("spec.mainContainer", why))
    if framework == "mxnet" and "jobMode" in spec:
        seen.add("jobMode")
        if spec["jobMode"] != "MXTrain":
            why = f"{spec['jobMode']!r} (tuning) has no MLJob equivalent; only MXTrain (training) converts"
            out.dropped.append(Problem("spec.jobMode", why))
    return options, seen


ELASTIC_DROPPED = {
    "metrics": (
        "mljob creates no HorizontalPodAutoscaler: point your own at the job's scale subresource (scaleTargetRef "
        "the MLJob; kubectl scale works too), within minReplicas and maxReplicas"
    ),
    "standalone": (
        "torchrun's --standalone gives every pod a rendezvous of its own, so the pods never form one job; mljob runs "
        "the job's rendezvous on worker 0 (Kubeflow's PET_STANDALONE=\"\" also stops torchrun, which reads an integer)"
    ),
}
"""A PyTorchJob's ``elasticPolicy`` fields that are not carried over, and why (``standalone: false`` is carried as
its absence)."""


def _elastic_policy(elastic: Mapping[str, Any], roles: Mapping[str, Any], out: Converted) -> dict[str, Any]:
    """A PyTorchJob's ``elasticPolicy`` as the PyTorch plugin's, with the bounds Kubeflow's ``setElasticPolicy``
    defaults written out, so the MLJob's bounds never follow its Worker count."""
    policy = {k: copy.deepcopy(v) for k, v in elastic.items() if v is not None and k not in ELASTIC_DROPPED}
    for key, why in ELASTIC_DROPPED.items():
        if elastic.get(key) not in (None, False, []):
            out.dropped.append(Problem(f"spec.elasticPolicy.{key}", why))
    low, high = policy.get("minReplicas"), policy.get("maxReplicas")
    if low is None and high is None:
        workers = (roles.get("Worker") or {}).get("replicas")
        if workers is not None:
            policy["minReplicas"] = policy["maxReplicas"] = workers
    elif low is None:
        policy["minReplicas"] = high
    elif high is None:
        policy["maxReplicas"] = low
    return policy


def _launcher_containers(spec: Mapping[str, Any]) -> list[str]:
    """The names of an MPIJob's Launcher containers, in order ([] where the spec has none)."""
    launcher = (spec.get("mpiReplicaSpecs") or {}).get("Launcher")
    pod = ((launcher or {}).get("template") or {}).get("spec") if isinstance(launcher, Mapping) else None
    containers = (pod or {}).get("containers") if isinstance(pod, Mapping) else None
    return [str(c.get("name")) for c in containers or () if isinstance(c, Mapping)]
