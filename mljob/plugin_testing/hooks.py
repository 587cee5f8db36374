"""The contract for a plugin that is not a framework: one that implements the cross-cutting hooks.

``mljob_mutate_pod`` and ``mljob_validate`` run for every job of every framework. A plugin that
adds a sidecar or enforces a policy therefore meets frameworks its author never tried: one with a
leader and one without, pods with one container or several. :class:`HookContract` renders jobs of
such frameworks with and without the plugin and checks what the operator relies on::

    from mljob.plugin_testing import HookContract
    import my_sidecar_plugin

    class TestSidecarContract(HookContract):
        plugin = my_sidecar_plugin

        def act_on(self, job):                  # turn any job into one the plugin acts on
            return with_annotation(job, "sidecar.example.com/enabled", "true")

Jobs the plugin does not act on must render exactly as without it; jobs it acts on must render to
valid Kubernetes objects that keep every name, label and owner the operator relies on, or be
refused with field paths, never with a crash.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest

from mljob.api import MLJob
from mljob.core.names import RESERVED_LABEL_PREFIX, dns1123_problem
from mljob.core.render import render, wiring_container
from mljob.core.schema import object_problems
from mljob.core.validation import INVALID_SPEC, check_job
from mljob.framework import Cluster, Framework, Replica, Role
from mljob.plugin_testing.contract import shape_of
from mljob.plugin_testing.jobs import make_job, plugins_for, problems_outside_fields, wire
from mljob.plugins import PluginError, Plugins

__all__ = ["Coordinated", "HookContract", "Peers", "pod_rule_problems", "with_annotations", "with_labels"]


class Coordinated(Framework):
    """A framework with a coordinator, workers and a role that runs until stopped (the shape of TensorFlow's)."""

    name = "coordinated"
    roles = (
        Role("Coordinator", default_port=7100, leader=True, max_replicas=1),
        Role("Worker", default_port=7100),
        Role("Store", default_port=7101, runs_until_stopped=True),
    )
    reserved_env = frozenset({"COORDINATED_COORDINATOR", "COORDINATED_RANK"})
    port_name = "coord-port"

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        leader = Replica("Coordinator", 0) if "Coordinator" in job.spec.replica_specs else Replica("Worker", 0)
        return {"COORDINATED_COORDINATOR": str(cluster.address(leader)), "COORDINATED_RANK": str(replica.index)}

    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        if "Coordinator" in job.spec.replica_specs:
            return replica == Replica("Coordinator", 0)
        return replica == Replica("Worker", 0)


class Peers(Framework):
    """A framework of equal peers: no replica coordinates, so no pod is labelled leader."""

    name = "peers"
    roles = (Role("Peer", default_port=7200, min_replicas=1),)
    reserved_env = frozenset({"PEERS"})

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        count = job.spec.replica_specs["Peer"].replicas
        return {"PEERS": ",".join(str(cluster.address(Replica("Peer", i))) for i in range(count))}


def with_annotations(job: MLJob, annotations: Mapping[str, str]) -> MLJob:
    """``job`` with ``annotations`` added to its own ``metadata.annotations``."""
    doc = wire(job)
    doc["metadata"]["annotations"] = {**doc["metadata"].get("annotations", {}), **annotations}
    return MLJob.model_validate(doc)


def with_labels(job: MLJob, labels: Mapping[str, str]) -> MLJob:
    """``job`` with ``labels`` added to its own ``metadata.labels``."""
    doc = wire(job)
    doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **labels}
    return MLJob.model_validate(doc)


def _two_containers(job: MLJob, framework: Framework) -> MLJob:
    """``job`` with a second container (a log shipper) in every pod, the wiring container named."""
    doc = wire(job)
    for spec in doc["spec"]["replicaSpecs"].values():
        containers = spec["template"]["spec"]["containers"]
        containers.append({"name": "log-shipper", "image": "fluent/fluent-bit:3", "args": ["--quiet"]})
    return MLJob.model_validate(doc)


class HookContract:
    """What a cross-cutting plugin must obey; subclass it, set :attr:`plugin` and override :meth:`act_on`.

    :attr:`plugin` is what ``load_plugins(extra=[...])`` takes: the module (or object) holding the
    ``@mljob.hookimpl`` functions, exactly what the package's entry point names.
    """

    plugin: ClassVar[object]
    opt_in: ClassVar[bool] = True
    """The plugin acts only on jobs that ask (an annotation): every other job must render and validate exactly
    as without it. A policy that checks every job (and refuses those that break it) sets this to False."""

    def act_on(self, job: MLJob) -> MLJob:
        """``job`` changed so the plugin acts on it (an annotation, a label); by default it acts on every job."""
        return job

    def frameworks(self) -> Sequence[Framework]:
        """The frameworks the jobs are made for: by default one with a coordinator and one of equal peers."""
        return (Coordinated(), Peers())

    def jobs(self) -> Sequence[MLJob]:
        """Ordinary jobs (before :meth:`act_on`): a few shapes per framework, with one container or two."""
        made: list[MLJob] = []
        for framework in self.frameworks():
            small = make_job(framework, _counts(framework, 1), name=f"{framework.name}-small", namespace="hooks")
            large = make_job(framework, _counts(framework, 3), name=f"{framework.name}-large", namespace="hooks")
            made += [small, large, _two_containers(small, framework)]
        return made

    def invalid_jobs(self) -> Sequence[MLJob]:
        """Jobs the plugin's ``mljob_validate`` must refuse, with field paths."""
        return ()

    # -- helpers ------------------------------------------------------------------------------

    def _plugins(self, on: bool) -> Plugins:
        return plugins_for(*self.frameworks(), extra=[self.plugin] if on else [])

    def _framework(self, job: MLJob) -> Framework:
        return next(f for f in self.frameworks() if f.name == job.spec.framework)

    def _render(self, job: MLJob, plugins: Plugins) -> list[dict[str, Any]]:
        return render(job, self._framework(job), plugins, uid="hook-contract-uid")

    # -- loading --------------------------------------------------------------------------------

    def test_loads_with_known_hooks_only(self) -> None:
        plugins = self._plugins(on=True)  # pluggy's check_pending raises for a misspelled hook
        assert plugins.broken == [], plugins.broken
        assert sorted(plugins.frameworks) == sorted(f.name for f in self.frameworks())

    # -- jobs the plugin leaves alone -------------------------------------------------------------

    def test_jobs_it_does_not_act_on_are_untouched(self) -> None:
        if not self.opt_in:
            pytest.skip("the plugin checks every job (opt_in = False)")
        on, off = self._plugins(on=True), self._plugins(on=False)
        for job in self.jobs():
            if wire(self.act_on(job)) == wire(job):
                continue  # the plugin acts on every job
            assert check_job(job, on).problems == check_job(job, off).problems, shape_of(job)
            assert self._render(job, on) == self._render(job, off), f"{shape_of(job)} was changed"

    # -- jobs the plugin acts on --------------------------------------------------------------------

    def test_it_acts_on_some_job(self) -> None:
        """Some job of :meth:`act_on` renders differently, or some invalid job is refused only with the plugin."""
        on, off = self._plugins(on=True), self._plugins(on=False)
        changed = [
            job
            for job in map(self.act_on, self.jobs())
            if check_job(job, on).ok and self._render(job, on) != self._render(job, off)
        ]
        refused = [job for job in self.invalid_jobs() if check_job(job, off).ok and not check_job(job, on).ok]
        assert changed or refused, (
            "no job the plugin changes or refuses: are act_on() and invalid_jobs() right, or does it do nothing?"
        )

    def test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly(self) -> None:
        on, off = self._plugins(on=True), self._plugins(on=False)
        for job in map(self.act_on, self.jobs()):
            checked = check_job(job, on)
            if not checked.ok:
                assert checked.reason == INVALID_SPEC, f"{shape_of(job)}: validation raised: {checked.problems}"
                assert not problems_outside_fields(checked.problems), problems_outside_fields(checked.problems)
                continue
            before = wire(job)
            try:
                mutated = self._render(job, on)
            except PluginError as error:
                raise AssertionError(f"{shape_of(job)}: rendering raised: {error}") from error
            assert wire(job) == before, f"{shape_of(job)}: the plugin changed the job itself"
            assert self._render(job, on) == mutated, f"{shape_of(job)}: two renders differ"
            plain = self._render(job, off)
            for obj in mutated:
                problems = [str(p) for p in object_problems(obj)]
                if obj["kind"] == "Pod":
                    problems += pod_rule_problems(obj)
                assert not problems, (shape_of(job), obj["metadata"]["name"], problems)
            self._check_kept(job, plain, mutated)

    def _check_kept(self, job: MLJob, plain: list[dict[str, Any]], mutated: list[dict[str, Any]]) -> None:
        """What the operator relies on: names, owners, mljob.io labels, the pod's DNS name, its wiring."""
        assert [(o["kind"], o["metadata"]["name"]) for o in mutated] == [
            (o["kind"], o["metadata"]["name"]) for o in plain
        ], f"{shape_of(job)}: objects were added, removed or renamed"
        framework = self._framework(job)
        for before, after in zip(plain, mutated, strict=True):
            where = f"{shape_of(job)}: {after['kind']} {after['metadata']['name']}"
            for key in ("namespace", "ownerReferences"):
                assert after["metadata"].get(key) == before["metadata"].get(key), f"{where}: metadata.{key} changed"
            ours = {
                k: v for k, v in before["metadata"].get("labels", {}).items() if k.startswith(RESERVED_LABEL_PREFIX)
            }
            kept = {k: v for k, v in after["metadata"].get("labels", {}).items() if k.startswith(RESERVED_LABEL_PREFIX)}
            assert kept == ours, f"{where}: mljob.io labels changed"
            if after["kind"] != "Pod":
                assert after == before, f"{where}: only pods are the plugin's to change"
                continue
            for key in ("hostname", "subdomain", "restartPolicy"):
                assert after["spec"].get(key) == before["spec"].get(key), f"{where}: spec.{key} changed"
            index = wiring_container(before["spec"]["containers"], framework)
            assert index is not None
            wired = [
                e for e in before["spec"]["containers"][index].get("env", []) if e["name"] in framework.reserved_env
            ]
            container = next(
                (c for c in after["spec"]["containers"] if c["name"] == before["spec"]["containers"][index]["name"]),
                None,
            )
            assert container is not None, f"{where}: the wiring container is gone"
            kept_wiring = [e for e in container.get("env", []) if e["name"] in framework.reserved_env]
            assert kept_wiring == wired, f"{where}: the framework's wiring changed"

    def test_invalid_jobs_are_refused_with_field_paths(self) -> None:
        on = self._plugins(on=True)
        for job in self.invalid_jobs():
            checked = check_job(job, on)
            assert not checked.ok, f"{shape_of(job)} should be refused but passes validation"
            assert checked.reason == INVALID_SPEC, f"{shape_of(job)}: validation raised: {checked.problems}"
            assert not problems_outside_fields(checked.problems), problems_outside_fields(checked.problems)

    def test_problems_of_one_job_do_not_stop_another(self) -> None:
        """Validating a refused job first leaves the plugin able to pass a good one (no state kept)."""
        on = self._plugins(on=True)
        good = [j for j in map(self.act_on, self.jobs()) if check_job(j, on).ok]
        expected = [json.dumps(self._render(j, on), sort_keys=True) for j in good]
        for job in self.invalid_jobs():
            check_job(copy.deepcopy(job), on)
        assert [check_job(j, on).ok for j in good] == [True] * len(good)
        assert [json.dumps(self._render(j, on), sort_keys=True) for j in good] == expected


def pod_rule_problems(pod: Mapping[str, Any]) -> list[str]:
    """What the API server refuses in a pod beyond its OpenAPI schema, where sidecars usually go wrong.

    Container names (regular and init) unique DNS labels; volume names unique DNS labels; every
    volume mount naming a volume of the pod.
    """
    spec = pod.get("spec") or {}
    found: list[str] = []
    containers = [("containers", c) for c in spec.get("containers") or []]
    containers += [("initContainers", c) for c in spec.get("initContainers") or []]
    volumes = [str(v.get("name")) for v in spec.get("volumes") or []]
    for kind, names in (("container", [str(c.get("name")) for _, c in containers]), ("volume", volumes)):
        for name in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"two {kind}s are called {name!r}")
        found += [f"{kind} name {name!r}: {why}" for name in names if (why := dns1123_problem(name))]
    for kind, container in containers:
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                found.append(f"{kind} {container.get('name')!r} mounts {mount.get('name')!r}, which is no volume")
    return found


def _counts(framework: Framework, count: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for role in framework.roles:
        n = max(count, role.min_replicas)
        counts[role.name] = n if role.max_replicas is None else min(n, role.max_replicas)
    return counts
