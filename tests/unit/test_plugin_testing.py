"""The contract kit itself: a well-behaved framework passes it, and each kind of misbehaviour fails it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from mljob import Cluster, Framework, MLJob, Outcome, Replica, Role
from mljob.plugin_testing import FakeCluster, FrameworkContract, make_job, plugins_for
from mljob.validation import check_job


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


def failures(framework: Framework) -> dict[str, str]:
    """Run every contract test against ``framework``: test name -> the first failure's message."""

    class Contract(FrameworkContract):
        pass

    Contract.framework = framework
    contract = Contract()
    failed: dict[str, str] = {}
    for name, method in inspect.getmembers(contract, inspect.ismethod):
        if not name.startswith("test_"):
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


@pytest.mark.parametrize(
    ("framework", "test"),
    [
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
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Framework) else value,
)
def test_the_contract_catches(framework: Framework, test: str) -> None:
    assert test in failures(framework)
