"""The hook contract itself: a well-behaved cross-cutting plugin passes it, each kind of misbehaviour fails it."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest

from mljob import MLJob, Problem, Replica, hookimpl
from mljob.plugin_testing import HookContract, with_annotations

TEAM = "example.com/team"


class Labeller:
    """Labels the pods of a job that names a team, and refuses a team name with a space."""

    @hookimpl
    def mljob_validate(self, job: MLJob, framework: Any) -> list[Problem]:
        team = job.metadata.annotations.get(TEAM)
        if team is not None and " " in team:
            return [Problem(f"metadata.annotations.{TEAM}", f"{team!r} has a space")]
        return []

    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["metadata"]["labels"][TEAM] = job.metadata.annotations[TEAM]


def contract_for(plugin: object, **overrides: Any) -> HookContract:
    class Contract(HookContract):
        def act_on(self, job: MLJob) -> MLJob:
            return with_annotations(job, {TEAM: "vision"})

        def invalid_jobs(self) -> list[MLJob]:
            return [with_annotations(job, {TEAM: "computer vision"}) for job in self.jobs()[:1]]

    Contract.plugin = plugin
    for name, value in overrides.items():
        setattr(Contract, name, value)
    return Contract()


def failures(contract: HookContract) -> dict[str, str]:
    failed: dict[str, str] = {}
    for name, method in inspect.getmembers(contract, inspect.ismethod):
        if name.startswith("test_"):
            try:
                method()
            except pytest.skip.Exception:
                pass
            except (Exception, pytest.fail.Exception) as error:
                failed.setdefault(name, str(error))
    return failed


def test_a_well_behaved_plugin_passes() -> None:
    assert failures(contract_for(Labeller())) == {}


class TouchesEveryJob(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        pod["metadata"]["labels"][TEAM] = job.metadata.annotations.get(TEAM, "none")


class RenamesPods(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["metadata"]["name"] += "-x"


class TakesOverTheLeaderLabel(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["metadata"]["labels"]["mljob.io/leader"] = "true"


class InvalidSidecar(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["spec"]["containers"].append({"name": "Sidecar", "image": "x", "volumeMounts": [{"name": "logs"}]})


class NamelessSidecar(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["spec"]["containers"].append({"image": "x"})


class SecondSidecarOfTheSameName(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["spec"].setdefault("initContainers", []).append({**pod["spec"]["containers"][0], "image": "x"})


class OverridesTheWiring(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            for container in pod["spec"]["containers"]:
                for var in container.get("env", []):
                    var["value"] = "127.0.0.1:1"


class CountsPods(Labeller):
    counter = itertools.count()

    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            pod["metadata"]["labels"]["example.com/serial"] = str(next(self.counter))


class ChangesTheJob(Labeller):
    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        if TEAM in job.metadata.annotations:
            job.metadata.annotations["example.com/seen"] = "yes"


class NeedsALeader(Labeller):
    @hookimpl
    def mljob_validate(self, job: MLJob, framework: Any) -> list[Problem]:
        next(r for r in job.spec.replica_specs if framework.role(r).leader)  # a job of peers: StopIteration
        return []


class BadPath(Labeller):
    @hookimpl
    def mljob_validate(self, job: MLJob, framework: Any) -> list[Problem]:
        team = job.metadata.annotations.get(TEAM, "")
        return [Problem("annotations.team", "has a space")] if " " in team else []


class NothingToDo:
    """Implements a hook but acts on nothing: act_on() must be wrong."""

    @hookimpl
    def mljob_mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        return None


class MisspelledHook:
    @hookimpl
    def mljob_mutate_pods(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        return None


@pytest.mark.parametrize(
    ("plugin", "test"),
    [
        (TouchesEveryJob(), "test_jobs_it_does_not_act_on_are_untouched"),
        (RenamesPods(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (TakesOverTheLeaderLabel(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (InvalidSidecar(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (NamelessSidecar(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (SecondSidecarOfTheSameName(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (OverridesTheWiring(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (CountsPods(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (ChangesTheJob(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (NeedsALeader(), "test_jobs_it_acts_on_render_to_valid_pods_or_are_refused_cleanly"),
        (BadPath(), "test_invalid_jobs_are_refused_with_field_paths"),
        (NothingToDo(), "test_it_acts_on_some_job"),
        (MisspelledHook(), "test_loads_with_known_hooks_only"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_the_contract_catches(plugin: object, test: str) -> None:
    assert test in failures(contract_for(plugin))


def test_a_policy_for_every_job_is_not_held_to_opt_in() -> None:
    class Policy(Labeller):
        """Every job needs the team annotation."""

        @hookimpl
        def mljob_validate(self, job: MLJob, framework: Any) -> list[Problem]:
            if TEAM not in job.metadata.annotations:
                return [Problem(f"metadata.annotations.{TEAM}", "every job names its team")]
            return super().mljob_validate(job, framework)

    assert "test_jobs_it_does_not_act_on_are_untouched" in failures(contract_for(Policy()))
    assert failures(contract_for(Policy(), opt_in=False)) == {}


def test_a_policy_that_only_validates_acts_by_refusing() -> None:
    class OnlyValidates:
        @hookimpl
        def mljob_validate(self, job: MLJob, framework: Any) -> list[Problem]:
            return Labeller().mljob_validate(job, framework)

    assert failures(contract_for(OnlyValidates(), act_on=lambda self, job: job)) == {}
    nothing_refused = contract_for(OnlyValidates(), act_on=lambda self, job: job, invalid_jobs=lambda self: [])
    assert "test_it_acts_on_some_job" in failures(nothing_refused)


def test_a_refused_job_must_be_refused() -> None:
    contract = contract_for(Labeller(), invalid_jobs=lambda self: [with_annotations(self.jobs()[0], {TEAM: "ok"})])
    assert (
        "should be refused but passes validation"
        in failures(contract)["test_invalid_jobs_are_refused_with_field_paths"]
    )
