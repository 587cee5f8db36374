"""Plugin discovery and isolation, without installing anything: entry points are faked."""

import importlib.metadata
import sys
import types
from collections.abc import Mapping

import pytest

import mljob.plugins
from mljob import Cluster, Framework, MLJob, Problem, Replica, Role, hookimpl
from mljob.core.validation import PLUGIN_ERROR, check_job
from mljob.plugins import PluginError, load_plugins


class Toy(Framework):
    name = "toy"
    roles = (Role("Worker", default_port=1234, leader=True, min_replicas=1),)

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {"TOY_RANK": str(replica.index)}


def toy_module(name: str, framework: Framework | None = None) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def mljob_register_frameworks(register):
        register(framework or Toy())

    module.mljob_register_frameworks = mljob_register_frameworks  # type: ignore[attr-defined]
    return module


def fake_entry_points(monkeypatch, **targets: str) -> None:
    eps = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, mljob.plugins.ENTRY_POINT_GROUP) for name, value in targets.items()
    )
    monkeypatch.setattr(mljob.plugins.importlib.metadata, "entry_points", lambda group: eps)


def toy_job(**extra) -> MLJob:
    spec = {
        "framework": "toy",
        "replicaSpecs": {
            "Worker": {"replicas": 2, "template": {"spec": {"containers": [{"name": "toy", "image": "busybox"}]}}}
        },
    }
    return MLJob.model_validate(
        {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "metadata": {"name": "j"}, "spec": spec, **extra}
    )


def test_entry_point_plugin_is_discovered(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_toy_plugin", toy_module("fake_toy_plugin"))
    fake_entry_points(monkeypatch, toy="fake_toy_plugin")
    plugins = load_plugins()
    assert list(plugins.frameworks) == ["toy"]
    assert plugins.broken == []


def test_plugin_that_fails_to_import_is_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_toy_plugin", toy_module("fake_toy_plugin"))
    fake_entry_points(monkeypatch, toy="fake_toy_plugin", broken="no_such_module_for_mljob_tests")
    plugins = load_plugins()
    assert list(plugins.frameworks) == ["toy"]
    assert [b.name for b in plugins.broken] == ["broken"]
    assert "ModuleNotFoundError" in plugins.broken[0].error


def test_blocked_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_toy_plugin", toy_module("fake_toy_plugin"))
    fake_entry_points(monkeypatch, toy="fake_toy_plugin")
    monkeypatch.setenv(mljob.plugins.DISABLE_ENV, "toy")
    assert dict(load_plugins().frameworks) == {}


def test_duplicate_framework_name_is_reported():
    plugins = load_plugins(entry_points=False, extra=[toy_module("a"), toy_module("b")])
    assert list(plugins.frameworks) == ["toy"]
    assert len(plugins.broken) == 1
    assert "registered twice" in plugins.broken[0].error


def test_misspelled_hook_fails_loudly():
    module = types.ModuleType("typo")

    @hookimpl
    def mljob_register_framework(register):  # missing "s"
        pass

    module.mljob_register_framework = mljob_register_framework  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="unknown hook"):
        load_plugins(entry_points=False, extra=[module])


def test_framework_that_raises_in_validate_fails_only_its_job():
    class Exploding(Toy):
        def validate(self, job: MLJob) -> list[Problem]:
            raise RuntimeError("kaboom")

    plugins = load_plugins(entry_points=False, extra=[toy_module("x", Exploding())])
    checked = check_job(toy_job(), plugins)
    assert checked.reason == PLUGIN_ERROR
    assert "kaboom" in str(checked.problems[0])


def test_broadcast_validator_adds_problems_and_is_isolated():
    policy = types.ModuleType("policy")

    @hookimpl
    def mljob_validate(job, framework):
        return [Problem("metadata.labels.team", "every job needs a team label")]

    policy.mljob_validate = mljob_validate  # type: ignore[attr-defined]
    plugins = load_plugins(entry_points=False, extra=[toy_module("t"), policy])
    checked = check_job(toy_job(), plugins)
    assert [str(p) for p in checked.problems] == ["metadata.labels.team: every job needs a team label"]


def test_mutate_pod_error_is_a_plugin_error():
    bad = types.ModuleType("bad")

    @hookimpl
    def mljob_mutate_pod(job, replica, pod):
        raise KeyError("nope")

    bad.mljob_mutate_pod = mljob_mutate_pod  # type: ignore[attr-defined]
    plugins = load_plugins(entry_points=False, extra=[toy_module("t"), bad])
    with pytest.raises(PluginError, match="mljob_mutate_pod"):
        plugins.mutate_pod(toy_job(), Replica("Worker", 0), {})
