"""The contract kit itself: a well-behaved framework passes it, and each kind of misbehaviour fails it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from mljob import Cluster, Framework, LocalWiring, MLJob, Outcome, Problem, Replica, Role, hookimpl
from mljob.core.validation import check_job
from mljob.framework import replicas_of
from mljob.plugin_testing import FakeCluster, FrameworkContract, field_path_problem, job_shapes, make_job, plugins_for


class Good(Framework):
    name = "good"
    roles = (
        Role("Leader", default_port=7000, leader=True, max_replicas=1, min_replicas=1),
        Role("Worker", default_port=7000),
        Role("Store", default_port=7001, runs_until_stopped=True),
    )
    reserved_env = frozenset({"GOOD_LEADER", "GOOD_RANK", "GOOD_SIZE"})
    port_name = "good-port"

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {
            "GOOD_LEADER": str(cluster.address(Replica("Leader", 0))),
            "GOOD_RANK": str(replica.index),
            "GOOD_SIZE": str(sum(spec.replicas for spec in job.spec.replica_specs.values())),
        }


def failures(framework: Framework, *, local: bool = True, hooks: tuple[object, ...] = ()) -> dict[str, str]:
    """Run every contract test against ``framework``: test name -> the first failure's message.

    ``local=False`` leaves out the real local run: a framework broken on purpose may never let it end
    before its deadline.
    """

    class Contract(FrameworkContract):
        pass

    Contract.framework = framework
    Contract.hooks = hooks
    contract = Contract()
    failed: dict[str, str] = {}
    for name, method in inspect.getmembers(contract, inspect.ismethod):
        if not name.startswith("test_") or (name == "test_runs_locally" and not local):
            continue
        styles: list[dict[str, Any]] = [{}]
        if "style" in inspect.signature(method).parameters:
            styles = [{"style": "dns"}, {"style": "ip"}]
        for kwargs in styles:
            try:
                method(**kwargs)
            except pytest.skip.Exception:
                pass
            except (Exception, pytest.fail.Exception) as error:  # what pytest would report as a failure
                failed.setdefault(name, str(error))
    return failed


def test_a_well_behaved_framework_passes() -> None:
    assert failures(Good()) == {}


def test_make_job_builds_a_valid_job_in_one_line() -> None:
    roles: dict[str, int | dict[str, Any]] = {"Leader": 1, "Worker": {"replicas": 2, "restartPolicy": "Never"}}
    job = make_job(Good(), roles, namespace="ns", ports={"Worker": 9000})
    assert check_job(job, plugins_for(Good())).ok
    assert job.namespace == "ns"
    assert job.spec.replica_specs["Worker"].template["spec"]["containers"][0]["ports"][0]["containerPort"] == 9000


def test_fake_cluster_addresses_are_odd_and_distinct() -> None:
    job = make_job(Good(), {"Leader": 1, "Worker": 2})
    dns, ip = FakeCluster(job), FakeCluster(job, style="ip")
    assert [str(dns.address(Replica("Worker", i))) for i in range(2)] == [
        "n1-worker0.fake-cluster.invalid:40108",
        "n2-worker1.fake-cluster.invalid:40115",
    ]
    assert str(ip.address(Replica("Leader", 0))) == "198.18.0.1:40101"
    with pytest.raises(KeyError, match="worker-2 is not a replica"):
        dns.address(Replica("Worker", 2))


class MadeUpAddress(Good):
    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {**super().env(job, replica, cluster), "GOOD_LEADER": f"{job.name}-leader-0.{job.name}:7000"}


class DefaultPort(Good):
    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        host = cluster.address(Replica("Leader", 0)).host
        return {**super().env(job, replica, cluster), "GOOD_LEADER": f"{host}:7000"}


class Unreserved(Good):
    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {**super().env(job, replica, cluster), "GOOD_EXTRA": "1"}


class NeverWired(Good):
    reserved_env = Good.reserved_env | {"GOOD_NEVER"}


class NotStrings(Good):
    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, Any]:
        return {**super().env(job, replica, cluster), "GOOD_RANK": replica.index}


class Counting(Good):
    calls = 0

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        Counting.calls += 1
        return {**super().env(job, replica, cluster), "GOOD_RANK": str(Counting.calls)}


class Sticky(Good):
    """Caches the first answer forever: another job gets the first job's wiring."""

    first: dict[Replica, Mapping[str, str]] | None = None

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        if self.first is None:
            self.first = {}
        return self.first.setdefault(replica, super().env(job, replica, cluster))


class EagerSuccess(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        return True


class WaitsForStores(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        return bool(outcomes) and all(o is Outcome.SUCCEEDED for o in outcomes.values())


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class LooseOptions(Good):
    options_model = Loose


class TwoLeaders(Good):
    def is_leader(self, job: MLJob, replica: Replica) -> bool:
        return replica.index == 0


class CollidingRoles(Good):
    roles = (*Good.roles, Role("worker", default_port=7000))  # type: ignore[assignment]


class BadVariableName(Good):
    reserved_env = frozenset({"GOOD_LEADER", "GOOD_RANK", "GOOD_SIZE", "GOOD=BAD"})

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {**super().env(job, replica, cluster), "GOOD=BAD": "1"}


class CrashesOnThreeWorkers(Good):
    """Its sample job has two workers; a job with three, which it accepts, breaks it."""

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        if job.spec.replica_specs.get("Worker") and job.spec.replica_specs["Worker"].replicas == 3:
            raise IndexError("list index out of range")
        return super().env(job, replica, cluster)


class ValidateCrashesWithoutStores(Good):
    def validate(self, job: MLJob) -> list[Problem]:
        stores = job.spec.replica_specs["Store"].replicas  # KeyError for a job without stores
        return [Problem("spec.replicaSpecs.Store.replicas", "too many")] if stores > 9 else []


class SnakeCasePath(Good):
    def validate(self, job: MLJob) -> list[Problem]:
        if "Store" not in job.spec.replica_specs:
            return [Problem("spec.replica_specs.Store", "a job needs a store")]
        return []


class PathlessProblem(Good):
    def validate(self, job: MLJob) -> list[Problem]:
        return [Problem("", "a job needs a store")] if "Store" not in job.spec.replica_specs else []


class Refusing(Good):
    """Says it refuses a job of many workers, but refuses nothing."""

    def validate(self, job: MLJob) -> list[Problem]:
        return []


class LeaderMayFail(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        workers = [r for r in outcomes if r.role == "Worker"]
        return bool(workers) and all(outcomes[r] is Outcome.SUCCEEDED for r in workers)


class FailureIsFinished(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        return any(o is Outcome.FAILED for o in outcomes.values()) or super().succeeded(job, outcomes)


class NotABool(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> Any:
        return super().succeeded(job, outcomes) or None


class MissingIsAnError(Good):
    def succeeded(self, job: MLJob, outcomes: Mapping[Replica, Outcome]) -> bool:
        return all(outcomes[r] is Outcome.SUCCEEDED for r in replicas_of(job) if r.role != "Store")


class OwnPortForTheLeader(Good):
    """The leader's host with the asking replica's port: wrong as soon as roles listen on different ports."""

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        host = cluster.address(Replica("Leader", 0)).host
        return {**super().env(job, replica, cluster), "GOOD_LEADER": f"{host}:{cluster.address(replica).port}"}


class StoresStayHome(Good):
    """Leaves its stores out of a local run and hands the leader a file of the run, as the MPI plugin does."""

    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        if replica.role == "Store":
            return LocalWiring(run=False)
        if replica.role == "Leader":
            return LocalWiring(env={"GOOD_SIZE": str(folder / "size")}, files={"size": "3\n"})
        return LocalWiring()


class NobodyRunsLocally(Good):
    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        return LocalWiring(run=False)


class UnreservedLocalVariable(Good):
    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        return LocalWiring(env={"GOOD_LOCAL": "1"})


class FileOutsideTheFolder(Good):
    def local_wiring(self, job: MLJob, replica: Replica, folder: Path) -> LocalWiring:
        return LocalWiring(files={"../escape": ""})


class MakesItsConfig(Good):
    def objects(self, job: MLJob, cluster: Cluster) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{job.name}-config"}, "data": {}}]


def mounting(suffix: str) -> object:
    """A plugin whose ``mljob_mutate_pod`` mounts ConfigMap ``<job><suffix>`` into every pod."""

    @hookimpl
    def mljob_mutate_pod(job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        volume = {"name": "cfg", "configMap": {"name": job.name + suffix}}
        pod["spec"].setdefault("volumes", []).append(volume)

    return SimpleNamespace(mljob_mutate_pod=mljob_mutate_pod)


class ObjectsTwice(Good):
    def objects(self, job: MLJob, cluster: Cluster) -> list[dict[str, Any]]:
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{job.name}-config"}, "data": {}}
        return [config, dict(config)]


class FreshNames(Good):
    calls = 0

    def objects(self, job: MLJob, cluster: Cluster) -> list[dict[str, Any]]:
        FreshNames.calls += 1
        name = f"{job.name}-config-{FreshNames.calls}"
        return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}]


class WaitsInACircle(Good):
    def starts_after(self, job: MLJob, replica: Replica) -> tuple[str, ...]:
        others = {"Leader": "Worker", "Worker": "Leader"}
        return (
            (others[replica.role],) if replica.role in others and others[replica.role] in job.spec.replica_specs else ()
        )


class WaitsForAStranger(Good):
    def starts_after(self, job: MLJob, replica: Replica) -> tuple[str, ...]:
        return ("Chief",) if replica.role == "Worker" else ()


def test_a_framework_whose_pods_mount_the_objects_it_makes_passes() -> None:
    found = failures(MakesItsConfig(), local=False, hooks=(mounting("-config"),))
    assert found == {}


@pytest.mark.parametrize(
    ("framework", "hooks", "test"),
    [
        (MakesItsConfig(), (mounting("-other"),), "test_per_job_objects_are_the_jobs_and_are_what_its_pods_mount"),
        (ObjectsTwice(), (), "test_per_job_objects_are_the_jobs_and_are_what_its_pods_mount"),
        (FreshNames(), (), "test_per_job_objects_are_the_jobs_and_are_what_its_pods_mount"),
        (WaitsInACircle(), (), "test_starts_after_names_other_roles_of_the_job_and_never_waits_in_a_circle"),
        (WaitsForAStranger(), (), "test_starts_after_names_other_roles_of_the_job_and_never_waits_in_a_circle"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Framework) else None,
)
def test_the_contract_catches_bad_objects_and_waits(framework: Framework, hooks: tuple[object, ...], test: str) -> None:
    assert test in failures(framework, local=False, hooks=hooks)


def test_a_framework_that_leaves_replicas_out_of_a_local_run_passes() -> None:
    assert failures(StoresStayHome()) == {}


@pytest.mark.parametrize(
    ("framework", "test"),
    [
        (NobodyRunsLocally(), "test_local_wiring_is_data"),
        (UnreservedLocalVariable(), "test_local_wiring_is_data"),
        (FileOutsideTheFolder(), "test_local_wiring_is_data"),
        (MadeUpAddress(), "test_every_address_comes_from_the_cluster"),
        (DefaultPort(), "test_every_address_comes_from_the_cluster"),
        (Unreserved(), "test_every_wired_variable_is_reserved"),
        (NeverWired(), "test_every_reserved_variable_is_wired_for_some_replica"),
        (NotStrings(), "test_env_is_strings_only"),
        (Counting(), "test_env_is_deterministic"),
        (Sticky(), "test_env_of_one_job_does_not_leak_into_another"),
        (EagerSuccess(), "test_nothing_run_is_not_success"),
        (WaitsForStores(), "test_roles_that_run_until_stopped_need_not_exit"),
        (LooseOptions(), "test_options_model_rejects_unknown_keys"),
        (TwoLeaders(), "test_at_most_one_leader"),
        (CollidingRoles(), "test_roles_are_unique_and_well_formed"),
        (BadVariableName(), "test_reserved_variables_are_variable_names"),
        (CrashesOnThreeWorkers(), "test_every_replica_of_every_valid_shape_is_wired"),
        (SnakeCasePath(), "test_any_shape_is_validated_with_field_paths_never_a_crash"),
        (PathlessProblem(), "test_any_shape_is_validated_with_field_paths_never_a_crash"),
        (ValidateCrashesWithoutStores(), "test_any_shape_is_validated_with_field_paths_never_a_crash"),
        (LeaderMayFail(), "test_a_failed_coordinator_is_not_success"),
        (FailureIsFinished(), "test_one_failure_while_nothing_succeeded_is_not_success"),
        (NotABool(), "test_the_success_rule_answers_for_any_one_failure_or_missing_replica"),
        (MissingIsAnError(), "test_the_success_rule_answers_for_any_one_failure_or_missing_replica"),
        (OwnPortForTheLeader(), "test_a_named_port_moves_the_role_and_every_address_of_it"),
        (OwnPortForTheLeader(), "test_renders_for_a_cluster"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Framework) else value,
)
def test_the_contract_catches(framework: Framework, test: str) -> None:
    assert test in failures(framework, local=False)


def test_invalid_jobs_must_be_refused_with_field_paths() -> None:
    class Contract(FrameworkContract):
        framework = Refusing()

        def invalid_jobs(self) -> list[MLJob]:
            return [make_job(self.framework, {"Leader": 1, "Worker": 9})]

    with pytest.raises(AssertionError, match="should be refused but passes validation"):
        Contract().test_invalid_jobs_are_refused_with_field_paths()


def test_shapes_leave_out_optional_roles_and_stay_within_bounds() -> None:
    base = make_job(Good(), {"Leader": 1, "Worker": 2}, options={}, name="base", namespace="ns")
    shapes = {tuple((r, s.replicas) for r, s in j.spec.replica_specs.items()) for j in job_shapes(Good(), base)}
    assert (("Leader", 1), ("Worker", 1)) in shapes
    assert (("Leader", 1), ("Worker", 3), ("Store", 3)) in shapes
    assert all(dict(shape).get("Leader", 1) == 1 for shape in shapes)  # min 1, max 1
    assert {j.name for j in job_shapes(Good(), base)} == {"base"}


@pytest.mark.parametrize(
    "path",
    [
        "spec.replicaSpecs.Worker.replicas",
        "spec.replicaSpecs.Worker.template.spec.containers[0].env[3].name",
        "spec.frameworkOptions.nprocPerNode",
        "spec.runPolicy.schedulingPolicy.minAvailable",
        "metadata.annotations.tensorboard.mljob.io/logdir",
        "metadata.labels.example.com/team",
        "metadata.ownerReferences[0].uid",
        "spec.framework",
    ],
)
def test_field_paths(path: str) -> None:
    assert field_path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "the path is empty"),
        (
            "spec.replica_specs.Worker",
            "spec has no 'replica_specs'; fields there: framework, frameworkOptions, managedBy, replicaSpecs",
        ),
        ("spec.replicaSpecs.Worker.count", "spec.replicaSpecs.Worker has no 'count'"),
        ("spec.runPolicy.backoffLimit.x", "spec.runPolicy.backoffLimit has no 'x'"),
        ("replicaSpecs.Worker", "the MLJob has no 'replicaSpecs'"),
        ("spec..framework", "is not a field path"),
        ("spec.replicaSpecs[0]", "spec.replicaSpecs has no [0]"),
    ],
)
def test_not_field_paths(path: str, why: str) -> None:
    problem = field_path_problem(path)
    assert problem is not None
    assert why in problem
