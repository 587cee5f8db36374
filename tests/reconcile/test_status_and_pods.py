"""The building blocks: merge patches, conditions, phase, reading pods."""

from __future__ import annotations

import pytest
from jobkit import T0, s

from mljob.api import Condition, ConditionType, Phase
from mljob.core import children as pods
from mljob.core.status import derive_phase, merge_diff, set_condition


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"m": {"x": 1, "y": 2}}, {"m": {"x": 1}}, {"m": {"y": None}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
        ({}, {"n": {"x": 1}}, {"n": {"x": 1}}),
    ],
)
def test_merge_diff(old, new, patch):
    assert merge_diff(old, new) == patch


def cond(kind: str, status: str, when=T0) -> Condition:
    return Condition(type=ConditionType(kind), status=status, reason="R", last_transition_time=when)


def test_setting_an_exclusive_condition_turns_the_others_false():
    before = [cond("Created", "True"), cond("Running", "True")]
    after = set_condition(before, ConditionType.RESTARTING, True, "Restarting", "m", s(5))
    assert [(c.type.value, c.status, c.last_transition_time) for c in after] == [
        ("Created", "True", T0),
        ("Running", "False", s(5)),
        ("Restarting", "True", s(5)),
    ]


def test_same_status_keeps_the_transition_time_but_takes_the_new_reason():
    after = set_condition([cond("Running", "True")], ConditionType.RUNNING, True, "Again", "new", s(9))
    assert after[0].last_transition_time == T0
    assert after[0].reason == "Again"


def test_a_false_condition_that_never_existed_is_not_added():
    assert set_condition([], ConditionType.SUSPENDED, False, "Resumed", "", T0) == []


@pytest.mark.parametrize(
    ("true", "phase"),
    [
        ([], Phase.PENDING),
        (["Created"], Phase.PENDING),
        (["Created", "Running"], Phase.RUNNING),
        (["Created", "Restarting"], Phase.RESTARTING),
        (["Created", "Suspended"], Phase.SUSPENDED),
        (["Created", "Failed"], Phase.FAILED),
        (["Succeeded", "Suspended"], Phase.SUCCEEDED),
    ],
)
def test_phase_is_derived_from_the_conditions(true, phase):
    assert derive_phase([cond(k, "True") for k in true]) is phase


def pod(status: dict, containers=("toy",)) -> dict:
    return {"metadata": {"name": "p"}, "status": status}


@pytest.mark.parametrize(
    ("status", "text", "retryable"),
    [
        (
            {"phase": "Failed", "containerStatuses": [{"name": "toy", "state": {"terminated": {"exitCode": 1}}}]},
            "worker-2 exited with code 1",
            False,
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "sidecar", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "toy", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
                ],
            },
            "worker-2 exited with code 137 (OOMKilled)",
            True,
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 0}}},
                    {"name": "b", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}},
                ],
            },
            "worker-2 exited with code 2 (Error)",
            False,
        ),
        ({"phase": "Failed", "reason": "Evicted", "message": "low memory"}, "worker-2 was evicted: low memory", True),
        ({"phase": "Unknown", "reason": "NodeLost"}, "worker-2 lost its node (NodeLost)", True),
        ({"phase": "Failed", "reason": "UnexpectedAdmissionError"}, "worker-2 failed (UnexpectedAdmissionError)", True),
    ],
)
def test_why_a_pod_stopped(status, text, retryable):
    stop = pods.stop_of(pod(status), "toy")
    assert stop.describe("worker-2") == text
    assert stop.retryable is retryable


def test_in_place_restarts_are_summed_over_containers_and_init_containers():
    p = pod(
        {
            "initContainerStatuses": [{"name": "init", "restartCount": 1}],
            "containerStatuses": [{"name": "a", "restartCount": 2}, {"name": "b", "restartCount": 3}],
        }
    )
    assert pods.restarts(p) == 6


def test_the_controller_reference_must_be_an_mljob_controller():
    def owned(**ref):
        base = {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "name": "j", "uid": "u", "controller": True}
        return {"metadata": {"ownerReferences": [{**base, **ref}]}}

    assert pods.controller_uid(owned()) == "u"
    assert pods.controller_name(owned()) == "j"
    assert pods.controller_uid(owned(controller=False)) is None
    assert pods.controller_uid(owned(kind="Job")) is None
    assert pods.controller_uid(owned(apiVersion="batch/v1")) is None
    assert pods.controller_uid({"metadata": {"labels": {"mljob.io/job-name": "j"}}}) is None
