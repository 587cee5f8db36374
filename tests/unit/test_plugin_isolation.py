"""A broken plugin costs only what it touches: the ways a plugin breaks, each beside a working framework.

Entry points are faked (as in test_plugins.py); tests/cli/test_cli_plugin_isolation.py does the
same through installed distributions and the real ``mljob`` command, and
tests/operator/test_e2e_plugins.py in the operator.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys
import types
from collections.abc import Mapping

import pytest

import mljob.plugins
from mljob import Cluster, Framework, MLJob, Replica, Role, hookimpl
from mljob.core.render import render
from mljob.core.validation import PLUGIN_ERROR, check_job
from mljob.plugin_testing import make_job
from mljob.plugins import load_plugins


class Good(Framework):
    name = "good"
    roles = (Role("Worker", default_port=1234, leader=True, min_replicas=1),)
    reserved_env = frozenset({"GOOD_RANK"})

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {"GOOD_RANK": str(replica.index)}


def module(name: str, **hooks: object) -> types.ModuleType:
    made = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(made, hook, hookimpl(function))  # type: ignore[call-overload]
    return made


def register_good(register):
    register(Good())


def entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    eps = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, mljob.plugins.ENTRY_POINT_GROUP) for name, value in targets.items()
    )
    monkeypatch.setattr(mljob.plugins.importlib.metadata, "entry_points", lambda group: eps)


class RaisesOnImport(importlib.abc.MetaPathFinder):
    """Makes ``import name`` raise ``error``, as a plugin whose module fails at import time."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name, self.error = name, error

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name:
            raise self.error
        return None


@pytest.fixture
def good_plugin(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "isolation_good", module("isolation_good", mljob_register_frameworks=register_good)
    )
    monkeypatch.delenv(mljob.plugins.DISABLE_ENV, raising=False)


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RuntimeError("CUDA driver too old"), "RuntimeError: CUDA driver too old"),
        (SyntaxError("invalid syntax"), "SyntaxError: invalid syntax"),
        (
            ImportError("cannot import name 'Kernel' from 'mljob'"),
            "ImportError: cannot import name 'Kernel' from 'mljob'",
        ),
    ],
)
def test_a_module_that_raises_on_import_is_broken_and_the_others_load(good_plugin, monkeypatch, error, shown):
    monkeypatch.setattr(sys, "meta_path", [RaisesOnImport("isolation_bad", error), *sys.meta_path])
    entry_points(monkeypatch, good="isolation_good", bad="isolation_bad")
    plugins = load_plugins()
    assert list(plugins.frameworks) == ["good"]
    assert [(b.name, b.error) for b in plugins.broken] == [("bad", shown)]
    job = make_job(Good(), {"Worker": 2})
    assert check_job(job, plugins).ok
    assert [o["kind"] for o in render(job, Good(), plugins)] == ["Pod", "Pod", "Service"]


def test_a_registration_that_raises_is_broken_and_the_others_load(good_plugin, monkeypatch):
    def register_then_fail(register):
        register(Good())  # what it registered before raising is dropped with it
        raise KeyError("config file missing")

    monkeypatch.setitem(
        sys.modules, "isolation_bad", module("isolation_bad", mljob_register_frameworks=register_then_fail)
    )
    entry_points(monkeypatch, bad="isolation_bad", good="isolation_good")
    plugins = load_plugins()
    assert list(plugins.frameworks) == ["good"]
    assert [(b.name, b.error) for b in plugins.broken] == [("bad", "KeyError: 'config file missing'")]


def test_registering_something_that_is_not_a_framework_is_broken(good_plugin, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "isolation_bad", module("isolation_bad", mljob_register_frameworks=lambda register: register("x"))
    )
    entry_points(monkeypatch, good="isolation_good", bad="isolation_bad")
    plugins = load_plugins()
    assert list(plugins.frameworks) == ["good"]
    assert plugins.broken[0].error == "TypeError: registered 'x', which is not an mljob.Framework"


def test_a_hook_that_raises_for_one_job_fails_that_job_only(good_plugin, monkeypatch):
    def validate(job, framework):
        if job.metadata.annotations.get("explode") == "validate":
            raise ZeroDivisionError("division by zero")
        return []

    def mutate(job, replica, pod):
        if job.metadata.annotations.get("explode") == "mutate":
            raise RuntimeError("sidecar registry unreachable")

    monkeypatch.setitem(
        sys.modules, "isolation_hooks", module("isolation_hooks", mljob_validate=validate, mljob_mutate_pod=mutate)
    )
    entry_points(monkeypatch, good="isolation_good", hooks="isolation_hooks")
    plugins = load_plugins()
    ordinary = make_job(Good(), {"Worker": 1}, name="ordinary")
    refused = make_job(Good(), {"Worker": 1}, name="refused", job_annotations={"explode": "validate"})
    checked = check_job(refused, plugins)
    assert (checked.reason, [str(p) for p in checked.problems]) == (
        PLUGIN_ERROR,
        ["plugin 'hooks' failed in mljob_validate: ZeroDivisionError: division by zero"],
    )
    unrendered = make_job(Good(), {"Worker": 1}, name="unrendered", job_annotations={"explode": "mutate"})
    with pytest.raises(mljob.plugins.PluginError, match="'hooks' failed in mljob_mutate_pod: RuntimeError"):
        render(unrendered, Good(), plugins)
    assert check_job(ordinary, plugins).ok
    assert [o["kind"] for o in render(ordinary, Good(), plugins)] == ["Pod", "Service"]


def test_plugins_for_every_job_are_listed_with_their_hooks(good_plugin, monkeypatch):
    def validate(job, framework):
        return []

    monkeypatch.setitem(sys.modules, "isolation_policy", module("isolation_policy", mljob_validate=validate))
    entry_points(monkeypatch, good="isolation_good", policy="isolation_policy")
    plugins = load_plugins()
    assert plugins.broadcast_hooks() == {"policy": ["mljob_validate"]}
    assert sorted(plugins.loaded) == ["good", "policy"]
