"""The API models: defaults, the camelCase wire form, and timestamps the way the API server writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from mljob.api import (
    CleanPodPolicy,
    Condition,
    ConditionType,
    MLJob,
    MLJobStatus,
    Phase,
    ReplicaSpec,
    RestartPolicy,
    RunPolicy,
    format_time,
)

TEMPLATE = {"spec": {"containers": [{"name": "pytorch", "image": "python:3.11"}]}}


def wire_job(**spec_extra: object) -> dict[str, object]:
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "mnist"},
        "spec": {"framework": "pytorch", "replicaSpecs": {"Worker": {"template": TEMPLATE}}, **spec_extra},
    }


def test_defaults():
    job = MLJob.model_validate(wire_job())
    assert job.namespace == "default"
    assert job.spec.replica_specs["Worker"].replicas == 1
    assert job.spec.replica_specs["Worker"].restart_policy is None  # the framework's default applies
    assert job.spec.framework_options == {}
    assert job.spec.run_policy == RunPolicy()
    policy = job.spec.run_policy
    assert policy.backoff_limit == 6
    assert policy.clean_pod_policy is CleanPodPolicy.RUNNING
    assert policy.suspend is False
    assert policy.active_deadline_seconds is None
    assert policy.ttl_seconds_after_finished is None
    assert policy.scheduling_policy is None
    assert job.status is None


def test_status_defaults():
    status = MLJobStatus()
    assert status.phase is Phase.PENDING
    assert status.restart_count == 0
    assert status.conditions == []
    assert status.replica_statuses == {}
    assert status.message == ""


def test_camel_case_round_trip():
    wire = wire_job(
        runPolicy={
            "backoffLimit": 2,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 60,
            "cleanPodPolicy": "All",
            "suspend": True,
            "schedulingPolicy": {"minAvailable": 1, "queue": "q", "priorityClass": "high"},
        },
        frameworkOptions={"nprocPerNode": 2},
    )
    wire["spec"]["replicaSpecs"]["Worker"].update(replicas=3, restartPolicy="ExitCode")  # type: ignore[index]
    job = MLJob.model_validate(wire)
    assert job.spec.run_policy.active_deadline_seconds == 3600
    assert job.spec.run_policy.scheduling_policy is not None
    assert job.spec.run_policy.scheduling_policy.priority_class == "high"
    assert job.spec.replica_specs["Worker"].restart_policy is RestartPolicy.EXIT_CODE
    out = job.to_dict()
    assert out["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 60
    assert out["spec"]["replicaSpecs"]["Worker"] == {"replicas": 3, "restartPolicy": "ExitCode", "template": TEMPLATE}
    assert out["spec"]["frameworkOptions"] == {"nprocPerNode": 2}  # options stay as written: the plugin owns them
    assert "replica_specs" not in str(out)
    assert MLJob.model_validate(out) == job


def test_snake_case_names_are_accepted_in_python():
    spec = ReplicaSpec(replicas=2, restart_policy=RestartPolicy.NEVER, template=TEMPLATE)
    assert spec.to_dict() == {"replicas": 2, "restartPolicy": "Never", "template": TEMPLATE}


def test_to_dict_leaves_unset_optionals_out():
    out = MLJob.model_validate(wire_job()).to_dict()
    assert "status" not in out
    assert "restartPolicy" not in out["spec"]["replicaSpecs"]["Worker"]
    assert "activeDeadlineSeconds" not in out["spec"]["runPolicy"]
    assert "uid" not in out["metadata"]


def test_models_are_immutable():
    job = MLJob.model_validate(wire_job())
    with pytest.raises(ValidationError):
        job.spec.framework = "tensorflow"  # type: ignore[misc]


@pytest.mark.parametrize("value", ["3", 2.5, True, -1])
def test_replicas_are_strict_non_negative_integers(value):
    with pytest.raises(ValidationError):
        ReplicaSpec.model_validate({"replicas": value, "template": TEMPLATE})


def test_time_is_rfc3339_with_z_in_utc():
    moment = datetime(2024, 5, 6, 9, 8, 7, 654321, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2024-05-06T07:08:07Z"
    status = MLJobStatus(
        start_time=moment,
        completion_time=datetime(2024, 5, 6, 8, 0, 0, tzinfo=UTC),
        conditions=[Condition(type=ConditionType.RUNNING, status="True", last_transition_time=moment)],
    )
    out = status.to_dict()
    assert out["startTime"] == "2024-05-06T07:08:07Z"
    assert out["completionTime"] == "2024-05-06T08:00:00Z"
    assert out["conditions"][0]["lastTransitionTime"] == "2024-05-06T07:08:07Z"


def test_time_parses_what_the_api_server_writes():
    status = MLJobStatus.model_validate({"startTime": "2024-05-06T07:08:07Z", "phase": "Running"})
    assert status.start_time == datetime(2024, 5, 6, 7, 8, 7, tzinfo=UTC)
    assert status.phase is Phase.RUNNING
    assert status.to_dict()["startTime"] == "2024-05-06T07:08:07Z"


def test_python_mode_dump_keeps_datetimes():
    moment = datetime(2024, 5, 6, 7, 8, 7, tzinfo=UTC)
    assert MLJobStatus(start_time=moment).model_dump()["start_time"] == moment


def test_wrong_api_version_and_kind_are_rejected():
    with pytest.raises(ValidationError):
        MLJob.model_validate({**wire_job(), "apiVersion": "kubeflow.org/v1"})
    with pytest.raises(ValidationError):
        MLJob.model_validate({**wire_job(), "kind": "PyTorchJob"})
