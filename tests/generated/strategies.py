"""Hypothesis strategies for MLJobs: valid ones for every framework, and invalid ones that each break one field.

A valid job follows the framework's roles (their replica bounds), with restart and run policies drawn from what
the API allows. An invalid job is a valid one with one mutation, and the strategy returns the field path the
mutation broke, so a test can check that the refusal names it.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from mljob.plugins import load_plugins

PLUGINS = load_plugins()
FRAMEWORKS = sorted(PLUGINS.frameworks)
POLICIES = ["Always", "OnFailure", "Never", "ExitCode"]
NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)


def container(framework: str, cpu: str | None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": PLUGINS.frameworks[framework].container_name, "image": "busybox:1.36"}
    if cpu:
        c["resources"] = {"requests": {"cpu": cpu}}
    return c


@st.composite
def replica_specs(draw: st.DrawFn, framework: str, max_per_role: int = 3) -> dict[str, Any]:
    specs: dict[str, Any] = {}
    for role in PLUGINS.frameworks[framework].roles:
        low = role.min_replicas
        high = min(role.max_replicas if role.max_replicas is not None else max_per_role, max_per_role)
        if low == 0 and not draw(st.booleans()):
            continue
        if role.name == "Master" and "Chief" in specs:
            continue  # TensorFlow's Master is the Chief's old name: one or the other
        n = 1 if role.max_replicas == 1 else draw(st.integers(low, max(low, high)))
        spec: dict[str, Any] = {
            "replicas": n,
            "template": {"spec": {"containers": [container(framework, draw(st.sampled_from([None, "100m", "1"])))]}},
        }
        if draw(st.booleans()):
            spec["restartPolicy"] = draw(st.sampled_from(POLICIES))
        specs[role.name] = spec
    # What decides success must exist: a pod at all, and TensorFlow's Chief or a Worker (its plugin's rule).
    deciders = ("Chief", "Worker") if framework == "tensorflow" else tuple(specs) or ("Worker",)
    if not any(specs.get(role, {}).get("replicas") for role in deciders):
        specs.setdefault("Worker", {"template": {"spec": {"containers": [container(framework, None)]}}})
        specs["Worker"]["replicas"] = 1
    return specs


@st.composite
def run_policies(draw: st.DrawFn) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if draw(st.booleans()):
        policy["backoffLimit"] = draw(st.integers(0, 6))
    if draw(st.booleans()):
        policy["cleanPodPolicy"] = draw(st.sampled_from(["All", "Running", "None"]))
    if draw(st.booleans()):
        policy["activeDeadlineSeconds"] = draw(st.integers(60, 3600))
    if draw(st.booleans()):
        policy["ttlSecondsAfterFinished"] = draw(st.integers(0, 3600))
    if draw(st.booleans()):
        scheduling: dict[str, Any] = {}
        if draw(st.booleans()):
            scheduling["gangScheduler"] = draw(st.sampled_from(["kubernetes", "coscheduling", "volcano", "none"]))
        if draw(st.booleans()):
            scheduling["topology"] = {
                "key": draw(st.sampled_from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])),
                "mode": draw(st.sampled_from(["required", "preferred"])),
            }
        if draw(st.booleans()):
            scheduling["minResources"] = {"cpu": draw(st.sampled_from(["1", "500m", 2]))}
        if draw(st.booleans()):
            scheduling["scheduleTimeoutSeconds"] = draw(st.integers(1, 600))
        policy["schedulingPolicy"] = scheduling
    return policy


@st.composite
def valid_jobs(draw: st.DrawFn, max_per_role: int = 3) -> dict[str, Any]:
    framework = draw(st.sampled_from(FRAMEWORKS))
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": draw(NAMES), "namespace": "team"},
        "spec": {
            "framework": framework,
            "replicaSpecs": draw(replica_specs(framework, max_per_role)),
            "runPolicy": draw(run_policies()),
        },
    }


def _first_role(job: dict[str, Any]) -> str:
    return next(iter(job["spec"]["replicaSpecs"]))


MUTATIONS = (
    "unknown-framework",
    "unknown-role",
    "negative-replicas",
    "string-replicas",
    "bad-restart-policy",
    "unknown-spec-field",
    "bad-name",
    "bad-backoff",
    "bad-clean-policy",
    "bad-quantity",
    "bad-topology-mode",
    "no-containers",
    "too-many-replicas",
)


@st.composite
def invalid_jobs(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """(job, mutation, the field path the refusal must name)."""
    job = copy.deepcopy(draw(valid_jobs()))
    mutation = draw(st.sampled_from(MUTATIONS))
    spec = job["spec"]
    role = _first_role(job)
    if mutation == "unknown-framework":
        spec["framework"] = "caffe"
        return job, mutation, "spec.framework"
    if mutation == "unknown-role":
        spec["replicaSpecs"]["Janitor"] = copy.deepcopy(spec["replicaSpecs"][role])
        return job, mutation, "spec.replicaSpecs.Janitor"
    if mutation == "negative-replicas":
        spec["replicaSpecs"][role]["replicas"] = -1
        return job, mutation, f"spec.replicaSpecs.{role}.replicas"
    if mutation == "string-replicas":
        spec["replicaSpecs"][role]["replicas"] = "two"
        return job, mutation, f"spec.replicaSpecs.{role}.replicas"
    if mutation == "bad-restart-policy":
        spec["replicaSpecs"][role]["restartPolicy"] = "Sometimes"
        return job, mutation, f"spec.replicaSpecs.{role}.restartPolicy"
    if mutation == "unknown-spec-field":
        spec["replicaSpec"] = {}
        return job, mutation, "spec.replicaSpec"
    if mutation == "bad-name":
        job["metadata"]["name"] = "Bad_Name"
        return job, mutation, "metadata.name"
    if mutation == "bad-backoff":
        spec["runPolicy"]["backoffLimit"] = -3
        return job, mutation, "spec.runPolicy.backoffLimit"
    if mutation == "bad-clean-policy":
        spec["runPolicy"]["cleanPodPolicy"] = "Some"
        return job, mutation, "spec.runPolicy.cleanPodPolicy"
    if mutation == "bad-quantity":
        spec["runPolicy"]["schedulingPolicy"] = {"minResources": {"cpu": "lots"}}
        return job, mutation, "spec.runPolicy.schedulingPolicy.minResources.cpu"
    if mutation == "bad-topology-mode":
        spec["runPolicy"]["schedulingPolicy"] = {"topology": {"key": "kubernetes.io/hostname", "mode": "mostly"}}
        return job, mutation, "spec.runPolicy.schedulingPolicy.topology.mode"
    if mutation == "no-containers":
        spec["replicaSpecs"][role]["template"]["spec"]["containers"] = []
        return job, mutation, f"spec.replicaSpecs.{role}.template"
    spec["replicaSpecs"][role]["replicas"] = 1_000_000
    return job, mutation, f"spec.replicaSpecs.{role}.replicas"
