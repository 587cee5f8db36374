"""The contract kit for framework plugin authors: one class to subclass, one helper to build jobs.

Every framework package subclasses :class:`FrameworkContract` in its tests, so a plugin that
would break the operator (an address it made up, a wired variable users may override, a success
rule that fires before anything ran) fails in the author's CI rather than in someone's cluster::

    from mljob.plugin_testing import FrameworkContract, make_job

    class TestJaxContract(FrameworkContract):
        framework = Jax()

        def sample_job(self) -> MLJob:
            return make_job(self.framework, {"Worker": 3})

The contract then runs the framework against :class:`FakeCluster`, whose odd host names and IP
addresses make any address that did not come from ``cluster.address()`` stand out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import pytest
from pydantic import ValidationError

from mljob.api import API_VERSION, KIND, MLJob, RestartPolicy
from mljob.framework import Address, Cluster, Framework, Outcome, Problem, Replica, replicas_of
from mljob.hookspecs import hookimpl
from mljob.names import dns1123_problem, pod_name
from mljob.plugins import Plugins, load_plugins
from mljob.render import wiring_container
from mljob.validation import check_job

__all__ = ["FakeCluster", "FrameworkContract", "make_job", "plugins_for"]

FAKE_DOMAIN = "fake-cluster.invalid"
"""Host names of :class:`FakeCluster` end here (``.invalid`` can never resolve)."""
FAKE_NETWORK = "198.18"
"""IP addresses of :class:`FakeCluster` are in 198.18.0.0/15, reserved for benchmarks (RFC 2544)."""
_FAKE_HOST = re.compile(r"[A-Za-z0-9.-]*" + re.escape("." + FAKE_DOMAIN))
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SELF_MADE = ("localhost", "127.0.0.1", ".svc")


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
) -> MLJob:
    """An :class:`MLJob` for ``framework`` in one line, for tests.

    :param roles: role -> replica count, or role -> a replica spec in wire form (camelCase) whose
        missing ``template`` is filled in.
    :param ports: role -> a container port named ``framework.port_name`` (overrides the default).
    :param env: role -> variables the user sets in the wiring container.
    :param annotations: role -> pod template annotations.
    """
    specs: dict[str, Any] = {}
    for role, value in roles.items():
        spec: dict[str, Any] = {"replicas": value} if isinstance(value, int) else dict(value)
        if "template" not in spec:
            spec["template"] = _template(framework, role, image, ports, env, annotations)
        specs[role] = spec
    return MLJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"framework": framework.name, "replicaSpecs": specs, "frameworkOptions": dict(options or {})},
        }
    )


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


class _Registers:
    """A plugin object that registers one framework, so a test needs no module or entry point."""

    def __init__(self, framework: Framework) -> None:
        self.framework = framework

    @hookimpl
    def mljob_register_frameworks(self, register: Callable[[Framework], None]) -> None:
        register(self.framework)


def plugins_for(*frameworks: Framework) -> Plugins:
    """Plugins holding exactly ``frameworks`` (no entry points), for ``check_job`` in tests."""
    return load_plugins(entry_points=False, extra=[_Registers(f) for f in frameworks])


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


class FrameworkContract:
    """What every framework must obey; subclass it in a plugin's tests and set :attr:`framework`.

    Override :meth:`sample_job` (and :meth:`sample_jobs` to cover several shapes of job) when the
    default — every role with two replicas, within its bounds — is not a valid job for the
    framework. Every sample job must pass ``check_job``.
    """

    framework: ClassVar[Framework]

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
        """Every job the contract checks; add shapes whose wiring differs (no master, one replica)."""
        return [self.sample_job()]

    # -- helpers ------------------------------------------------------------------------------

    def _wired(self, style: Literal["dns", "ip"]) -> Iterator[tuple[MLJob, Replica, FakeCluster, Mapping[str, str]]]:
        for job in self.sample_jobs():
            for replica in replicas_of(job):
                cluster = FakeCluster(job, style=style)
                yield job, replica, cluster, self.framework.env(job, replica, cluster)

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
            self.framework.options_model.model_validate({"surelyNotAnOption": 1})

    def test_sample_jobs_pass_validation(self) -> None:
        plugins = plugins_for(self.framework)
        for job in self.sample_jobs():
            checked = check_job(job, plugins)
            assert checked.ok, [str(p) for p in checked.problems]

    def test_validate_returns_problems(self) -> None:
        for job in self.sample_jobs():
            problems = self.framework.validate(job)
            assert isinstance(problems, Sequence)
            assert all(isinstance(p, Problem) for p in problems)
            assert list(problems) == []

    def test_a_reserved_variable_set_by_the_user_is_rejected(self) -> None:
        if not self.framework.reserved_env:
            pytest.skip("the framework reserves no variables")
        job = self.sample_job()
        role = next(r for r, spec in job.spec.replica_specs.items() if spec.replicas)
        var = sorted(self.framework.reserved_env)[0]
        data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
        containers = data["spec"]["replicaSpecs"][role]["template"]["spec"]["containers"]
        container = containers[wiring_container(containers, self.framework) or 0]
        container["env"] = [{"name": var, "value": "x"}, *container.get("env", [])]
        checked = check_job(MLJob.model_validate(data), plugins_for(self.framework))
        assert any(var in p.message and ".env[0].name" in p.path for p in checked.problems), checked.problems

    # -- wiring ---------------------------------------------------------------------------------

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
            again = MLJob.model_validate(job.model_dump(mode="json", by_alias=True, exclude_none=True))
            second = self.framework.env(again, replica, FakeCluster(again))
            assert list(second.items()) == list(env.items()), f"{replica}: env differs between two calls"

    def test_env_of_one_job_does_not_leak_into_another(self) -> None:
        job = self.sample_job()
        data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["metadata"] = {"name": "other-job", "namespace": "other-ns"}
        other = MLJob.model_validate(data)
        first = {r: dict(self.framework.env(job, r, FakeCluster(job))) for r in replicas_of(job)}
        for replica in replicas_of(job):
            cluster = FakeCluster(other, style="ip", first_port=50001)
            for key, value in self.framework.env(other, replica, cluster).items():
                assert FAKE_DOMAIN not in value, f"{replica}: {key} of job {other.name!r} holds the other job's hosts"
                for host in cluster.hosts_in(value):
                    assert host in {a.host for a in cluster.handed_out()}, f"{replica}: {key} holds a stale {host}"
            assert dict(self.framework.env(job, replica, FakeCluster(job))) == first[replica], (
                f"{replica}: wiring {other.name!r} changed the wiring of {job.name!r}"
            )

    def test_every_reserved_variable_is_wired_for_some_replica(self) -> None:
        produced: set[str] = set()
        for style in ("dns", "ip"):
            for _, _, _, env in self._wired(style):
                produced.update(env)
        missing = set(self.framework.reserved_env) - produced
        assert not missing, f"reserved but never wired: {sorted(missing)}"

    def test_every_wired_variable_is_reserved(self) -> None:
        for style in ("dns", "ip"):
            for _, replica, _, env in self._wired(style):
                unreserved = set(env) - set(self.framework.reserved_env)
                assert not unreserved, f"{replica}: wires {sorted(unreserved)}, which users could silently override"

    def test_at_most_one_leader(self) -> None:
        for job in self.sample_jobs():
            leaders = [r for r in replicas_of(job) if self.framework.is_leader(job, r)]
            assert len(leaders) <= 1, f"{job.name}: several leaders {leaders}"

    # -- the success rule -----------------------------------------------------------------------

    def _all(self, job: MLJob, outcome: Outcome) -> dict[Replica, Outcome]:
        return dict.fromkeys(replicas_of(job), outcome)

    def test_nothing_run_is_not_success(self) -> None:
        for job in self.sample_jobs():
            assert self.framework.succeeded(job, {}) is False
            for outcome in (Outcome.PENDING, Outcome.RUNNING, Outcome.FAILED):
                assert self.framework.succeeded(job, self._all(job, outcome)) is False, outcome

    def test_everything_succeeded_is_success(self) -> None:
        for job in self.sample_jobs():
            assert self.framework.succeeded(job, self._all(job, Outcome.SUCCEEDED)) is True

    def test_roles_that_run_until_stopped_need_not_exit(self) -> None:
        for job in self.sample_jobs():
            outcomes = {
                r: Outcome.RUNNING if self._runs_until_stopped(r.role) else Outcome.SUCCEEDED for r in replicas_of(job)
            }
            assert self.framework.succeeded(job, outcomes) is True

    def _runs_until_stopped(self, role_name: str) -> bool:
        role = self.framework.role(role_name)
        return role is not None and role.runs_until_stopped
