"""The pod status a kubelet would write, from records of what the containers did: exact values, no cluster."""

from datetime import UTC, datetime, timedelta

import pytest

from mljob.nodeagent.podstatus import (
    LOST_REASON,
    ContainerRecord,
    PodFacts,
    Running,
    Terminated,
    Waiting,
    backoff_seconds,
    exit_code_of,
    phase,
    pod_status,
    records_for,
    recovered,
    restarts,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)


def pod(policy="Never", containers=("main",), inits=(), sidecars=(), status=None):
    spec = {
        "restartPolicy": policy,
        "containers": [{"name": n, "image": "busybox"} for n in containers],
        "initContainers": [{"name": n} for n in inits] + [{"name": n, "restartPolicy": "Always"} for n in sidecars],
    }
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": spec,
        "status": status or {"phase": "Pending", "conditions": [scheduled]},
    }


def facts(**kw):
    return PodFacts(**{"host_ip": "10.0.0.1", "pod_ip": "10.244.0.5", "start_time": T0, "sandbox_ready": True, **kw})


def done(code, reason=None):
    return Terminated(code, reason or ("Completed" if code == 0 else "Error"), T1, T0)


def test_succeeded_pod_reports_completed_containers_and_not_ready():
    records = records_for(pod())
    records[0].state, records[0].started = done(0), True
    status = pod_status(pod(), records, facts(initialized=True), T1)
    assert status["phase"] == "Succeeded"
    assert status["containerStatuses"] == [
        {
            "name": "main",
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "finishedAt": "2026-01-01T00:00:05Z",
                }
            },
            "lastState": {},
            "ready": False,
            "restartCount": 0,
            "image": "busybox",
            "imageID": "",
            "started": False,
        }
    ]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert status["podIP"] == "10.244.0.5"
    assert status["podIPs"] == [{"ip": "10.244.0.5"}]
    assert status["hostIP"] == "10.0.0.1"
    assert status["initContainerStatuses"] is None  # the merge patch removes what a kubelet would not write


def test_running_pod_is_ready_and_keeps_transition_times():
    p = pod()
    records = records_for(p)
    records[0].state, records[0].started = Running(T0), True
    first = pod_status(p, records, facts(initialized=True), T0)
    assert first["phase"] == "Running"
    assert {c["type"]: c["status"] for c in first["conditions"]} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    again = pod_status({**p, "status": {"conditions": first["conditions"]}}, records, facts(initialized=True), T1)
    assert again["conditions"] == first["conditions"]


@pytest.mark.parametrize(
    ("policy", "codes", "expected"),
    [
        ("Never", (0, 0), "Succeeded"),
        ("Never", (0, 3), "Failed"),
        ("OnFailure", (0, 0), "Succeeded"),
    ],
)
def test_phase_when_every_container_ended(policy, codes, expected):
    records = [ContainerRecord(f"c{i}", "regular", state=done(c), started=True) for i, c in enumerate(codes)]
    assert phase(records, facts(initialized=True), policy) == expected


def test_phase_pending_until_initialized_and_every_container_started():
    records = [ContainerRecord("c", "regular", state=Waiting("PodInitializing"))]
    assert phase(records, facts(initialized=False), "Never") == "Pending"
    assert phase(records, facts(initialized=True), "Never") == "Pending"
    records[0].state, records[0].started = Running(T0), True
    assert phase(records, facts(initialized=True), "Never") == "Running"


def test_failed_init_container_fails_the_pod_only_under_never():
    records = [ContainerRecord("init", "init", state=done(1), started=True), ContainerRecord("c", "regular")]
    assert phase(records, facts(), "Never") == "Failed"
    assert phase(records, facts(), "OnFailure") == "Pending"


def test_restart_waiting_in_backoff_keeps_the_pod_running_with_last_state():
    record = ContainerRecord("c", "regular", state=done(2), started=True)
    record.restart_pending()
    record.state = Waiting("CrashLoopBackOff", "back-off 10s")
    status = pod_status(pod("OnFailure", containers=("c",)), [record], facts(initialized=True), T1)
    assert status["phase"] == "Running"
    entry = status["containerStatuses"][0]
    assert entry["restartCount"] == 1
    assert entry["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    assert entry["lastState"]["terminated"]["exitCode"] == 2
    assert entry["lastState"]["terminated"]["reason"] == "Error"


def test_sidecars_are_init_statuses_and_do_not_decide_the_phase():
    p = pod("Never", inits=("setup",), sidecars=("tb",))
    records = records_for(p)
    assert [(r.name, r.kind) for r in records] == [("setup", "init"), ("tb", "sidecar"), ("main", "regular")]
    assert records[2].state == Waiting("PodInitializing")
    records[0].state, records[0].started = done(0), True
    records[1].state, records[1].started = Terminated(143, "Error", T1, T0, signal=None), True
    records[2].state, records[2].started = done(0), True
    status = pod_status(p, records, facts(initialized=True), T1)
    assert status["phase"] == "Succeeded"
    assert [s["name"] for s in status["initContainerStatuses"]] == ["setup", "tb"]


def test_restart_rules():
    assert restarts("regular", "Always", 0)
    assert not restarts("regular", "OnFailure", 0)
    assert restarts("regular", "OnFailure", 1)
    assert not restarts("regular", "Never", 1)
    assert restarts("sidecar", "Never", 0)
    assert restarts("init", "OnFailure", 1)
    assert not restarts("init", "Never", 1)
    assert not restarts("init", "Always", 0)


def test_backoff_doubles_from_base_to_the_cap():
    assert [backoff_seconds(n, 10, 300) for n in range(0, 8)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_seconds(10_000, 10, 300) == 300


def test_exit_codes_of_signals_are_128_plus():
    assert exit_code_of(3) == (3, None)
    assert exit_code_of(-9) == (137, 9)
    assert exit_code_of(-15) == (143, 15)


def test_recovered_after_agent_restart_reports_running_containers_lost():
    running_status = {
        "phase": "Running",
        "conditions": [],
        "containerStatuses": [
            {"name": "a", "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            {"name": "b", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ],
    }
    records = recovered(pod("OnFailure", containers=("a", "b"), status=running_status), T1)
    a, b = records
    assert isinstance(a.state, Terminated)
    assert (a.state.exit_code, a.state.reason, a.restarts) == (137, LOST_REASON, 2)
    assert a.state.started_at == T0
    assert isinstance(b.state, Terminated)
    assert b.state.exit_code == 0
    assert phase(records, facts(initialized=True), "Never") == "Failed"
