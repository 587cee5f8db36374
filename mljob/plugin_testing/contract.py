"""The framework contract: what every framework must obey, as one class a plugin's tests subclass.

Every framework package subclasses :class:`FrameworkContract` in its tests, so a plugin that
would break the operator (an address it made up, a wired variable users may override, a success
rule that fires before anything ran, a pod the API server refuses) fails in the author's CI rather
than in someone's cluster. The checks run on the author's sample jobs and on many more shapes of
them (:func:`~mljob.plugin_testing.jobs.job_shapes`), against :class:`FakeCluster` (odd addresses
that give away any address the framework made up), through the real render path and through a
real local run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import ValidationError

from mljob.api import MLJob, RestartPolicy
from mljob.core.names import LABEL_LEADER, dns1123_problem, pod_name
from mljob.core.render import ServiceCluster, render, render_objects, wiring_container
from mljob.core.schema import object_problems
from mljob.core.validation import INVALID_SPEC, PLUGIN_ERROR, check_job
from mljob.framework import Framework, LocalWiring, Outcome, Problem, Replica, replicas_of
from mljob.plugin_testing.jobs import (
    FAKE_DOMAIN,
    FakeCluster,
    job_shapes,
    make_job,
    plugins_for,
    problems_outside_fields,
    wire,
)
from mljob.plugin_testing.local import run_locally

__all__ = ["FrameworkContract", "shape_of"]

_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")
"""Kubernetes' rule for a variable name (1.34+): printable ASCII, no space, no ``=``."""
_SELF_MADE = ("localhost", "127.0.0.1", ".svc")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
UNKNOWN_OPTION = "surelyNotAnOption"
STYLES: tuple[Literal["dns", "ip"], ...] = ("dns", "ip")

_shapes_cache: dict[type, tuple[list[MLJob], list[MLJob]]] = {}


def shape_of(job: MLJob) -> str:
    """``Master x1, Worker x3 {"nprocPerNode": 2}``: which job a failure is about."""
    roles = ", ".join(f"{role} x{spec.replicas}" for role, spec in job.spec.replica_specs.items())
    options = job.spec.framework_options
    return f"{job.name}: {roles}" + (f" {json.dumps(options, sort_keys=True)}" if options else "")


class FrameworkContract:
    """What every framework must obey; subclass it in a plugin's tests and set :attr:`framework`.

    Override :meth:`sample_job` (and :meth:`sample_jobs` to cover several shapes of job) when the
    default — every role with two replicas, within its bounds — is not a valid job for the
    framework. Every sample job must pass ``check_job``. The contract also derives more shapes from
    each sample job (every role left out or at 1 or 3 replicas, within bounds) and checks all that
    ``check_job`` accepts. List jobs your framework must refuse in :meth:`invalid_jobs`.
    """

    framework: ClassVar[Framework]
    hooks: ClassVar[Sequence[object]] = ()
    """Your plugin's other hook implementations (objects or modules with ``@hookimpl`` functions, not the one that
    registers the framework): the contract renders pods through them as the operator would, so a pod your
    ``mljob_mutate_pod`` mounts an object into is checked against what :meth:`~Framework.objects` makes."""

    def sample_job(self) -> MLJob:
        """A valid, representative job: by default every role, two replicas each within bounds."""
        roles: dict[str, int] = {}
        for role in self.framework.roles:
            count = max(role.min_replicas, 2)
            if role.max_replicas is not None:
                count = min(count, role.max_replicas)
            if count:
                roles[role.name] = count
        return make_job(self.framework, roles, name="contract-job", namespace="contract-ns")

    def sample_jobs(self) -> Sequence[MLJob]:
        """Every job the contract starts from; add shapes whose wiring differs (no master, one replica)."""
        return [self.sample_job()]

    def invalid_jobs(self) -> Sequence[MLJob]:
        """Jobs your framework must refuse (beyond role bounds and unknown options, which the core checks).

        Each must fail validation as ``InvalidSpec`` (not a crash) with problems whose paths are
        field paths into the job: ``spec.replicaSpecs.Master.replicas``, ``spec.frameworkOptions.x``.
        """
        return ()

    def local_run_job(self) -> MLJob:
        """The job :meth:`test_runs_locally` runs: the valid shape with the most roles, then the fewest replicas."""
        return min(self._valid_shapes(), key=lambda j: (-len(j.spec.replica_specs), len(replicas_of(j)), shape_of(j)))

    # -- helpers ------------------------------------------------------------------------------

    def _all_shapes(self) -> tuple[list[MLJob], list[MLJob]]:
        """(every derived shape, the valid ones with the sample jobs first), computed once per class."""
        cached = _shapes_cache.get(type(self))
        if cached is None:
            plugins = plugins_for(self.framework, extra=self.hooks)
            shapes: dict[str, MLJob] = {}
            for base in self.sample_jobs():
                for job in job_shapes(self.framework, base):
                    shapes.setdefault(json.dumps(wire(job), sort_keys=True), job)
            valid: dict[str, MLJob] = {json.dumps(wire(j), sort_keys=True): j for j in self.sample_jobs()}
            for key, job in shapes.items():
                if key not in valid and check_job(job, plugins).ok:
                    valid[key] = job
            cached = _shapes_cache[type(self)] = (list(shapes.values()), list(valid.values()))
        return cached

    def _valid_shapes(self) -> list[MLJob]:
        return self._all_shapes()[1]

    def _wired(self, style: Literal["dns", "ip"]) -> Iterator[tuple[MLJob, Replica, FakeCluster, Mapping[str, str]]]:
        for job in self._valid_shapes():
            for replica in replicas_of(job):
                cluster = FakeCluster(job, style=style)
                yield job, replica, cluster, self.framework.env(job, replica, cluster)

    def _runs_until_stopped(self, role_name: str) -> bool:
        role = self.framework.role(role_name)
        return role is not None and role.runs_until_stopped

    def _all(self, job: MLJob, outcome: Outcome) -> dict[Replica, Outcome]:
        return dict.fromkeys(replicas_of(job), outcome)

    def _finishing(self, job: MLJob) -> list[Replica]:
        return [r for r in replicas_of(job) if not self._runs_until_stopped(r.role)]

    # -- the framework's description -----------------------------------------------------------

    def test_name_is_a_dns_label(self) -> None:
        assert isinstance(self.framework.name, str)
        assert dns1123_problem(self.framework.name) is None, dns1123_problem(self.framework.name)

    def test_container_name_is_a_dns_label(self) -> None:
        name = self.framework.container_name
        assert dns1123_problem(name) is None, dns1123_problem(name)

    def test_roles_are_unique_and_well_formed(self) -> None:
        roles = self.framework.roles
        assert roles, "a framework needs at least one role"
        lowered = [role.name.lower() for role in roles]
        assert len(set(lowered)) == len(lowered), f"role names collide in pod names: {lowered}"
        for role in roles:
            assert dns1123_problem(role.name.lower()) is None, f"role {role.name!r} cannot be part of a pod name"
            assert 1 <= role.default_port <= 65535, f"{role.name}: port {role.default_port} is out of range"
            assert role.min_replicas >= 0, f"{role.name}: min_replicas {role.min_replicas} < 0"
            if role.max_replicas is not None:
                assert role.max_replicas >= max(role.min_replicas, 1), f"{role.name}: max_replicas below min"

    def test_port_name_is_a_container_port_name(self) -> None:
        name = self.framework.port_name
        if name is not None:
            assert len(name) <= 15, f"{name!r} is longer than a container port name may be (15)"
            assert _PORT_NAME.match(name), f"{name!r} is not a valid container port name"

    def test_default_restart_policy_is_a_policy(self) -> None:
        assert isinstance(self.framework.default_restart_policy, RestartPolicy)

    def test_version_is_a_string(self) -> None:
        assert isinstance(self.framework.version, str)
        assert self.framework.version

    # -- options and validation ----------------------------------------------------------------

    def test_no_options_is_valid(self) -> None:
        self.framework.options_model.model_validate({})

    def test_options_model_rejects_unknown_keys(self) -> None:
        with pytest.raises(ValidationError):
            self.framework.options_model.model_validate({UNKNOWN_OPTION: 1})

    def test_sample_jobs_pass_validation(self) -> None:
        plugins = plugins_for(self.framework, extra=self.hooks)
        for job in self.sample_jobs():
            checked = check_job(job, plugins)
            assert checked.ok, [str(p) for p in checked.problems]

    def test_validate_returns_problems(self) -> None:
        for job in self.sample_jobs():
            problems = self.framework.validate(job)
            assert isinstance(problems, Sequence)
            assert all(isinstance(p, Problem) for p in problems)
            assert list(problems) == []

    def test_some_derived_shapes_are_valid(self) -> None:
        derived = len(self._valid_shapes()) - len(self.sample_jobs())
        assert derived > 0 or len(self._all_shapes()[0]) <= len(self.sample_jobs()), (
            "no shape derived from the sample jobs passes validation; check the roles' min/max_replicas"
        )

    def test_any_shape_is_validated_with_field_paths_never_a_crash(self) -> None:
        plugins = plugins_for(self.framework, extra=self.hooks)
        for job in self._all_shapes()[0]:
            checked = check_job(job, plugins)
            assert checked.reason != PLUGIN_ERROR, f"{shape_of(job)}: validation raised: {checked.problems}"
            assert not problems_outside_fields(checked.problems), (
                shape_of(job),
                problems_outside_fields(checked.problems),
            )

    def test_invalid_jobs_are_refused_with_field_paths(self) -> None:
        doc = wire(self.sample_job())
        doc["spec"]["frameworkOptions"] = {**doc["spec"].get("frameworkOptions", {}), UNKNOWN_OPTION: 1}
        plugins = plugins_for(self.framework, extra=self.hooks)
        unknown_option = check_job(MLJob.model_validate(doc), plugins)
        assert f"spec.frameworkOptions.{UNKNOWN_OPTION}" in [p.path for p in unknown_option.problems], (
            unknown_option.problems
        )
        for job in self.invalid_jobs():
            checked = check_job(job, plugins)
            assert not checked.ok, f"{shape_of(job)} should be refused but passes validation"
            assert checked.reason == INVALID_SPEC, f"{shape_of(job)}: validation raised: {checked.problems}"
            assert not problems_outside_fields(checked.problems), (
                shape_of(job),
                problems_outside_fields(checked.problems),
            )

    def test_reserved_variables_are_variable_names(self) -> None:
        for name in self.framework.reserved_env:
            assert isinstance(name, str)
            assert _ENV_NAME.match(name), f"{name!r} is not a variable name a pod accepts (printable ASCII, no '=')"

    def test_a_reserved_variable_set_by_the_user_is_rejected(self) -> None:
        if not self.framework.reserved_env:
            pytest.skip("the framework reserves no variables")
        job = self.sample_job()
        role = next(r for r, spec in job.spec.replica_specs.items() if spec.replicas)
        plugins = plugins_for(self.framework, extra=self.hooks)
        for var in sorted(self.framework.reserved_env):
            data = wire(job)
            containers = data["spec"]["replicaSpecs"][role]["template"]["spec"]["containers"]
            index = wiring_container(containers, self.framework) or 0
            containers[index]["env"] = [{"name": var, "value": "x"}, *containers[index].get("env", [])]
            checked = check_job(MLJob.model_validate(data), plugins)
            path = f"spec.replicaSpecs.{role}.template.spec.containers[{index}].env[0].name"
            assert any(var in p.message and p.path == path for p in checked.problems), (var, checked.problems)

    # -- wiring ---------------------------------------------------------------------------------

    def test_every_replica_of_every_valid_shape_is_wired(self) -> None:
        for job in self._valid_shapes():
            for replica in replicas_of(job):
                try:
                    self.framework.env(job, replica, FakeCluster(job))
                except Exception as error:
                    pytest.fail(f"{shape_of(job)}: env() of {replica} raised {type(error).__name__}: {error}")

    def test_env_is_strings_only(self) -> None:
        for _, replica, _, env in self._wired("dns"):
            assert isinstance(env, Mapping), f"{replica}: env is a {type(env).__name__}"
            for key, value in env.items():
                assert isinstance(key, str), f"{replica}: variable name {key!r}"
                assert key, f"{replica}: an empty variable name"
                assert isinstance(value, str), f"{replica}: {key}={value!r} is not a str"

    @pytest.mark.parametrize("style", ["dns", "ip"])
    def test_every_address_comes_from_the_cluster(self, style: Literal["dns", "ip"]) -> None:
        for job, replica, cluster, env in self._wired(style):
            handed = {address.host for address in cluster.handed_out()}
            pods = [pod_name(job.name, r) for r in replicas_of(job)]
            default_ports = {role.default_port for role in self.framework.roles if role.default_port >= 1024}
            for key, value in env.items():
                if not isinstance(value, str):
                    continue  # test_env_is_strings_only reports it
                for host in cluster.hosts_in(value):
                    assert host in handed, f"{replica}: {key} names {host}, which cluster.address() never returned"
                for made_up in (*_SELF_MADE, *pods):
                    assert made_up not in value, f"{replica}: {key}={value!r} builds an address ({made_up!r})"
                for port in default_ports:
                    assert not re.search(rf"(?<!\d){port}(?!\d)", value), (
                        f"{replica}: {key}={value!r} uses the default port {port}, not the cluster's"
                    )

    def test_env_is_deterministic(self) -> None:
        for job, replica, _, env in self._wired("dns"):
            again = MLJob.model_validate(wire(job))
            second = self.framework.env(again, replica, FakeCluster(again))
            assert list(second.items()) == list(env.items()), f"{replica}: env differs between two calls"

    def test_env_of_one_job_does_not_leak_into_another(self) -> None:
        job = self.sample_job()
        data = wire(job)
        data["metadata"] = {"name": "other-job", "namespace": "other-ns"}
        other = MLJob.model_validate(data)
        first = {r: dict(self.framework.env(job, r, FakeCluster(job))) for r in replicas_of(job)}
        for replica in replicas_of(job):
            cluster = FakeCluster(other, style="ip", first_port=50001)
            for key, value in self.framework.env(other, replica, cluster).items():
                assert FAKE_DOMAIN not in value, f"{replica}: {key} of job {other.name!r} holds the other job's hosts"
                for made_up in _SELF_MADE:
                    assert made_up not in value, f"{replica}: {key}={value!r} of job {other.name!r} is a stale address"
                for host in cluster.hosts_in(value):
                    assert host in {a.host for a in cluster.handed_out()}, f"{replica}: {key} holds a stale {host}"
            assert dict(self.framework.env(job, replica, FakeCluster(job))) == first[replica], (
                f"{replica}: wiring {other.name!r} changed the wiring of {job.name!r}"
            )

    def test_every_reserved_variable_is_wired_for_some_replica(self) -> None:
        produced: set[str] = set()
        for style in STYLES:
            for _, _, _, env in self._wired(style):
                produced.update(env)
        missing = set(self.framework.reserved_env) - produced
        assert not missing, f"reserved but never wired: {sorted(missing)}"

    def test_every_wired_variable_is_reserved(self) -> None:
        for style in STYLES:
            for job, replica, _, env in self._wired(style):
                unreserved = set(env) - set(self.framework.reserved_env)
                assert not unreserved, (
                    f"{shape_of(job)}: {replica} wires {sorted(unreserved)}, which users could silently override"
                )

    def test_at_most_one_leader(self) -> None:
        for job in self._valid_shapes():
            leaders = [r for r in replicas_of(job) if self.framework.is_leader(job, r)]
            assert len(leaders) <= 1, f"{shape_of(job)}: several leaders {leaders}"

    # -- for a cluster: the operator's render path -------------------------------------------------

    def test_renders_for_a_cluster(self) -> None:
        plugins = plugins_for(self.framework, extra=self.hooks)
        samples = [wire(j) for j in self.sample_jobs()]
        for job in self._valid_shapes():
            objects = render(job, self.framework, plugins)
            if wire(job) in samples:  # the Kubernetes schema is slower: the sample jobs are enough
                for obj in objects:
                    problems = object_problems(obj)
                    assert not problems, (shape_of(job), obj["kind"], [str(p) for p in problems])
            pods = [o for o in objects if o["kind"] == "Pod"]
            assert [p["metadata"]["name"] for p in pods] == [pod_name(job.name, r) for r in replicas_of(job)]
            assert [o["kind"] for o in objects].count("Service") == 1, shape_of(job)
            cluster = ServiceCluster.of(job, self.framework)
            for replica, pod in zip(replicas_of(job), pods, strict=True):
                self._check_rendered_pod(job, replica, pod, cluster)
            leaders = [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get(LABEL_LEADER) == "true"]
            assert len(leaders) <= 1, f"{shape_of(job)}: several pods labelled leader: {leaders}"

    def test_per_job_objects_are_the_jobs_and_are_what_its_pods_mount(self) -> None:
        """What :meth:`~Framework.objects` returns: ConfigMaps and Secrets named after the job (the core refuses
        anything else, failing the job), each name once, the same names on every call (the operator creates them
        once and keeps them), schema-valid; and every ConfigMap or Secret a rendered pod mounts or reads by a name
        of the job's is one of them, so no pod waits forever for an object nobody makes."""
        plugins = plugins_for(self.framework, extra=self.hooks)
        samples = [wire(j) for j in self.sample_jobs()]
        for job in self._valid_shapes():
            cluster = ServiceCluster.of(job, self.framework)
            objects = render_objects(job, self.framework, cluster)
            names = [(o["kind"], o["metadata"]["name"]) for o in objects]
            assert len(names) == len(set(names)), f"{shape_of(job)}: objects() names one object twice: {names}"
            again = [(o["kind"], o["metadata"]["name"]) for o in render_objects(job, self.framework, cluster)]
            assert again == names, f"{shape_of(job)}: objects() names different objects on a second call"
            if wire(job) in samples:
                for obj in objects:
                    problems = object_problems(obj)
                    assert not problems, (shape_of(job), obj["kind"], [str(p) for p in problems])
            pods = [o for o in render(job, self.framework, plugins) if o["kind"] == "Pod"]
            for pod in pods:
                for kind, name in _referenced(pod):
                    if name.startswith(job.name):
                        assert (kind, name) in names, (
                            f"{shape_of(job)}: {pod['metadata']['name']} uses {kind} {name}, which objects() "
                            "does not make"
                        )

    def test_starts_after_names_other_roles_of_the_job_and_never_waits_in_a_circle(self) -> None:
        """What :meth:`~Framework.starts_after` returns: roles of the job other than the replica's own, with no
        cycle (two roles waiting on each other would never start)."""
        for job in self._valid_shapes():
            roles = set(job.spec.replica_specs)
            waits: dict[str, set[str]] = {}
            for replica in replicas_of(job):
                after = self.framework.starts_after(job, replica)
                assert isinstance(after, tuple), f"{replica}: starts_after returned {type(after).__name__}"
                unknown = set(after) - (roles - {replica.role})
                assert not unknown, f"{shape_of(job)}: {replica} waits for {sorted(unknown)}, not other roles"
                waits.setdefault(replica.role, set()).update(after)
            for role in roles:
                seen, frontier = set(), set(waits.get(role, ()))
                while frontier:
                    seen |= frontier
                    frontier = {r for f in frontier for r in waits.get(f, ())} - seen
                assert role not in seen, f"{shape_of(job)}: {role} waits, through others, for itself"

    def _check_rendered_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any], cluster: ServiceCluster) -> None:
        containers = pod["spec"]["containers"]
        index = wiring_container(containers, self.framework)
        assert index is not None, f"{shape_of(job)}: {replica}'s pod has no wiring container"
        container = containers[index]
        wiring = self.framework.env(job, replica, cluster)
        rendered = [(e["name"], e.get("value")) for e in container.get("env", [])][: len(wiring)]
        assert rendered == list(wiring.items()), f"{shape_of(job)}: {replica}'s pod lacks its wiring"
        ports = [p["containerPort"] for p in container.get("ports", [])]
        assert cluster.ports[replica.role] in ports, f"{shape_of(job)}: {replica} does not expose its port"
        own = {pod_name(job.name, r): r for r in replicas_of(job)}
        service = re.compile(rf"([a-z0-9-]+)\.{re.escape(job.name)}\.{re.escape(job.namespace)}\.svc(?::(\d+))?")
        for key, value in wiring.items():
            for host, port in service.findall(value):
                assert host in own, f"{shape_of(job)}: {replica}: {key} names {host}, not a pod of the job"
                if port:
                    assert int(port) == cluster.ports[own[host].role], (
                        f"{shape_of(job)}: {replica}: {key} gives {host} port {port}, not its role's port"
                    )

    def test_a_named_port_moves_the_role_and_every_address_of_it(self) -> None:
        if not self.framework.port_name:
            pytest.skip("the framework has no port_name: its roles always listen on their default port")
        job = self.sample_job()
        data = wire(job)
        chosen = {role: 31000 + 17 * i for i, role in enumerate(data["spec"]["replicaSpecs"])}
        for role, spec in data["spec"]["replicaSpecs"].items():
            containers = spec["template"]["spec"]["containers"]
            container = containers[wiring_container(containers, self.framework) or 0]
            others = [p for p in container.get("ports", []) if p.get("name") != self.framework.port_name]
            port = {"name": self.framework.port_name, "containerPort": chosen[role], "protocol": "TCP"}
            container["ports"] = [*others, port]
        moved = MLJob.model_validate(data)
        cluster = ServiceCluster.of(moved, self.framework)
        assert dict(cluster.ports) == chosen
        pods = [
            o
            for o in render(moved, self.framework, plugins_for(self.framework, extra=self.hooks))
            if o["kind"] == "Pod"
        ]
        for replica, pod in zip(replicas_of(moved), pods, strict=True):
            self._check_rendered_pod(moved, replica, pod, cluster)

    # -- on one machine: the local runtime ----------------------------------------------------------

    def test_local_wiring_is_data(self) -> None:
        """What :meth:`~Framework.local_wiring` returns: strings, reserved names, plain file names, someone to run.

        The folder is never written to: ``local_wiring`` only returns the files to write.
        """
        folder = Path("/nonexistent/mljob-run")
        for job in self._valid_shapes():
            locals_ = {r: self.framework.local_wiring(job, r, folder) for r in replicas_of(job)}
            assert any(local.run for local in locals_.values()), f"{shape_of(job)}: no replica runs locally"
            for replica, local in locals_.items():
                assert isinstance(local, LocalWiring), f"{replica}: local_wiring returned {type(local).__name__}"
                for key, value in local.env.items():
                    assert isinstance(value, str), f"{replica}: {key}={value!r} is not a str"
                    assert key in self.framework.reserved_env, f"{replica}: local {key} is not in reserved_env"
                for name, content in local.files.items():
                    assert isinstance(content, str), f"{replica}: file {name!r} is not text"
                    assert name not in ("", ".", ".."), f"{replica}: file name {name!r}"
                    assert "/" not in name, f"{replica}: file name {name!r} is not a plain name"
                again = self.framework.local_wiring(MLJob.model_validate(wire(job)), replica, folder)
                assert again == local, f"{replica}: local_wiring differs between two calls"

    def test_runs_locally(self) -> None:
        job = self.local_run_job()
        run = run_locally(self.framework, job)
        assert run.succeeded, f"{shape_of(job)}: the local run failed: {run.message}\n{run.output[-3000:]}"
        assert run.exit_status == 0
        assert len(run.received) == len(run.wiring), run.output[-3000:]
        for replica, wiring in run.wiring.items():
            assert wiring.items() <= run.planned[replica].items(), f"{replica}: mljob run did not pass its wiring"
            for key, value in wiring.items():
                assert ".svc" not in value, f"{replica}: {key}={value!r} in a local run"
                assert FAKE_DOMAIN not in value, f"{replica}: {key}={value!r} in a local run"
                for host in _IPV4.findall(value):
                    assert host == "127.0.0.1", f"{replica}: {key}={value!r} names {host} in a local run"
        assert run.received_as_planned(), (run.received, run.planned)

    # -- the success rule -----------------------------------------------------------------------

    def test_nothing_run_is_not_success(self) -> None:
        for job in self._valid_shapes():
            assert self.framework.succeeded(job, {}) is False, shape_of(job)
            for outcome in (Outcome.PENDING, Outcome.RUNNING, Outcome.FAILED):
                assert self.framework.succeeded(job, self._all(job, outcome)) is False, (shape_of(job), outcome)

    def test_everything_succeeded_is_success(self) -> None:
        for job in self._valid_shapes():
            assert self.framework.succeeded(job, self._all(job, Outcome.SUCCEEDED)) is True, shape_of(job)

    def test_roles_that_run_until_stopped_need_not_exit(self) -> None:
        for job in self._valid_shapes():
            outcomes = {
                r: Outcome.RUNNING if self._runs_until_stopped(r.role) else Outcome.SUCCEEDED for r in replicas_of(job)
            }
            assert self.framework.succeeded(job, outcomes) is True, shape_of(job)

    def test_one_failure_while_nothing_succeeded_is_not_success(self) -> None:
        for job in self._valid_shapes():
            for failed in replicas_of(job):
                for others in (Outcome.PENDING, Outcome.RUNNING):
                    outcomes = {**self._all(job, others), failed: Outcome.FAILED}
                    assert self.framework.succeeded(job, outcomes) is False, (shape_of(job), str(failed), others)

    def test_a_failed_coordinator_is_not_success(self) -> None:
        for job in self._valid_shapes():
            for leader in (r for r in self._finishing(job) if self.framework.is_leader(job, r)):
                outcomes = {**self._all(job, Outcome.SUCCEEDED), leader: Outcome.FAILED}
                assert self.framework.succeeded(job, outcomes) is False, f"{shape_of(job)}: {leader} failed"

    def test_the_success_rule_answers_for_any_one_failure_or_missing_replica(self) -> None:
        for job in self._valid_shapes():
            for replica in replicas_of(job):
                failed = {**self._all(job, Outcome.SUCCEEDED), replica: Outcome.FAILED}
                missing = {r: o for r, o in self._all(job, Outcome.SUCCEEDED).items() if r != replica}
                for outcomes in (failed, missing):
                    answer = self.framework.succeeded(job, outcomes)
                    assert isinstance(answer, bool), f"{shape_of(job)}: succeeded() returned {answer!r}"


def _referenced(pod: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret ``pod`` mounts or reads env from."""
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or ():
        if "configMap" in volume:
            yield "ConfigMap", str(volume["configMap"].get("name"))
        if "secret" in volume:
            yield "Secret", str(volume["secret"].get("secretName"))
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "configMap" in source:
                yield "ConfigMap", str(source["configMap"].get("name"))
            if "secret" in source:
                yield "Secret", str(source["secret"].get("name"))
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        for source in container.get("envFrom") or ():
            if "configMapRef" in source:
                yield "ConfigMap", str(source["configMapRef"].get("name"))
            if "secretRef" in source:
                yield "Secret", str(source["secretRef"].get("name"))
        for env in container.get("env") or ():
            ref = env.get("valueFrom") or {}
            if "configMapKeyRef" in ref:
                yield "ConfigMap", str(ref["configMapKeyRef"].get("name"))
            if "secretKeyRef" in ref:
                yield "Secret", str(ref["secretKeyRef"].get("name"))
