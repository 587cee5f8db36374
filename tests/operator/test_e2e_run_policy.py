"""Run policy end to end: deadline, TTL, cleanPodPolicy, suspend/resume, deletion, strangers' pods, bad jobs."""

from __future__ import annotations

import copy
import json
import time

import kubernetes
import pytest
from harness import Backend, E2EJob, Forever, Role, Run, conditions


def test_the_deadline_fails_the_job_on_time_without_polling(backend: Backend):
    name = "rp-deadline"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(2, (Forever(),))}, run_policy={"activeDeadlineSeconds": 2}))
    backend.wait_phase(name, "Running")
    status = backend.wait_phase(name, "Failed", "Succeeded", timeout=backend.timeout + 5)
    assert conditions(status)["Failed"] == ("True", "DeadlineExceeded")
    assert status["message"].startswith("activeDeadlineSeconds (2s) passed since startTime")
    backend.wait(lambda: backend.pod_names(name) == [], what="running pods cleaned up")


@pytest.mark.kwok
def test_ttl_deletes_the_job_and_its_children(backend: Backend, e2e):
    name = "rp-ttl"
    backend.submit(
        E2EJob(name, "pytorch", {"Worker": Role(1, (Run(0, 0.2),))}, run_policy={"ttlSecondsAfterFinished": 1})
    )
    backend.wait_phase(name, "Succeeded")
    backend.messages(name, "Succeeded")  # the pass that finished it is over
    finished = e2e.audit.mark()
    backend.wait(lambda: backend.get("mljobs", name) is None, backend.timeout + 5, "the job to be deleted")
    # Woken by its timer: nothing about the job read or written in between, then one delete.
    requests = [r for r in e2e.audit.requests(finished, user="e2e-shared-operator") if r.name == name]
    assert [r.verb for r in requests] == ["delete"], requests
    # The real garbage collector (kube-controller-manager) removes the children through their ownerReferences.
    backend.wait(lambda: not [p for p in backend.list("pods") if p["metadata"]["name"].startswith(name)], what="GC")


CLEANUP = [
    # (how it ends, cleanPodPolicy, pods left once it has ended)
    ("success", "All", []),
    ("success", "None", ["worker-0"]),
    ("success", "Running", ["worker-0"]),
    ("failure", "All", []),
    ("failure", "Running", ["worker-0"]),
    ("failure", "None", ["master-0", "worker-0"]),
    ("backoff", "Running", ["worker-0"]),
    ("backoff", "All", []),
    ("deadline", "None", ["master-0", "worker-0"]),
    ("deadline", "All", []),
]
ENDS = {
    "success": ("Succeeded", "Succeeded"),
    "failure": ("Failed", "ReplicaFailed"),
    "backoff": ("Failed", "BackoffLimitExceeded"),
    "deadline": ("Failed", "DeadlineExceeded"),
}


@pytest.mark.parametrize(("end", "policy", "left"), CLEANUP)
def test_clean_pod_policy_on_every_terminal_path(backend: Backend, end, policy, left):
    name = f"rp-clean-{end}-{policy.lower()}"
    run_policy: dict[str, object] = {"cleanPodPolicy": policy}
    if end == "success":
        roles = {"Worker": Role(1, (Run(0, 0.2),))}
    elif end == "failure":
        roles = {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Run(5, 0.3),), "Never")}
    elif end == "backoff":  # recreated once, then the second 137 exhausts backoffLimit 1
        roles = {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Run(137, 0.3),), "ExitCode")}
        run_policy["backoffLimit"] = 1
    else:
        roles = {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Forever(),))}
        run_policy["activeDeadlineSeconds"] = 2
    backend.submit(E2EJob(name, "pytorch", roles, run_policy=run_policy))
    phase, reason = ENDS[end]
    status = backend.wait_phase(name, phase, timeout=backend.timeout + 5)
    assert conditions(status)[phase] == ("True", reason)
    want = [f"{name}-{pod}" for pod in left]
    # What a person sees in `kubectl describe`: one event for the terminal transition and its cleanup, with
    # every delete named. It comes after the pass's deletes, so once it is there the cleanup is complete.
    gone = [f"pod {name}-{role.lower()}-0" for role in roles if f"{role.lower()}-0" not in left]
    gone += [f"service {name}"] if policy != "None" else []
    (ended,) = backend.messages(name, reason, *gone)
    assert ended.startswith(status["message"]), ended
    assert not gone or "cleanPodPolicy" in ended.removeprefix(status["message"]), ended
    assert not [e for e in backend.events(name, "Deleted") if "cleanPodPolicy" in e["message"]]  # (a recreation's may)
    backend.wait(lambda: backend.pod_names(name, live=False) == want, what=f"pods left: {want}")
    service = [s for s in backend.list("services") if s["metadata"]["name"] == name]
    assert bool(service) == (policy == "None")


def test_suspend_deletes_the_pods_and_resume_recreates_them(backend: Backend):
    name = "rp-suspend"
    backend.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Forever(),))}))
    first = backend.wait_phase(name, "Running")
    backend.patch("mljobs", name, {"spec": {"runPolicy": {"suspend": True}}})
    status = backend.wait_phase(name, "Suspended")
    assert conditions(status)["Suspended"] == ("True", "Suspended")
    assert "startTime" not in status
    backend.wait(lambda: backend.pod_names(name, live=False) == [], what="pods gone")
    assert backend.messages(name, "Suspended") == [status["message"]]
    backend.messages(name, "Deleted", f"pod {name}-master-0", f"pod {name}-worker-0", "suspended")
    time.sleep(1.1)  # startTime has a one-second resolution
    backend.patch("mljobs", name, {"spec": {"runPolicy": {"suspend": False}}})
    status = backend.wait_phase(name, "Running")
    assert conditions(status)["Suspended"] == ("False", "Resumed")
    assert status["startTime"] > first["startTime"]
    assert backend.pod_names(name) == [f"{name}-master-0", f"{name}-worker-0"]
    assert backend.events(name, "Resumed")


def _with_image(spec: dict, image: str) -> dict:
    specs = copy.deepcopy(spec["replicaSpecs"])
    for role in specs.values():
        role["template"]["spec"]["containers"][0]["image"] = image
    return specs


def test_replica_specs_are_immutable_while_running_and_change_while_suspended(backend: Backend):
    name = "rp-immutable"
    backend.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Forever(),))}))
    backend.wait_phase(name, "Running")
    uids = {n: p["metadata"]["uid"] for n, p in backend.pods(name).items()}
    changed = _with_image(backend.job(name)["spec"], "busybox:1.37")
    # The API server enforces the CRD's CEL rule, with the field path; the operator never sees the change.
    with pytest.raises(kubernetes.client.ApiException) as refused:
        backend.patch("mljobs", name, {"spec": {"replicaSpecs": changed}})
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert "spec.replicaSpecs: Forbidden: replicaSpecs is immutable unless the job is suspended" in message, message
    assert backend.phase(name) == "Running"
    assert {n: p["metadata"]["uid"] for n, p in backend.pods(name).items()} == uids

    # Kueue's way: suspend, edit, resume; the pods come back with the new spec.
    backend.patch("mljobs", name, {"spec": {"runPolicy": {"suspend": True}}})
    backend.wait_phase(name, "Suspended")
    changed = _with_image(backend.job(name)["spec"], "busybox:1.36.1")
    backend.patch("mljobs", name, {"spec": {"replicaSpecs": changed}})
    backend.wait(lambda: backend.pod_names(name, live=False) == [], what="pods gone")
    backend.patch("mljobs", name, {"spec": {"runPolicy": {"suspend": False}}})
    backend.wait_phase(name, "Running")
    pods = backend.pods(name)
    assert sorted(pods) == [f"{name}-master-0", f"{name}-worker-0"]
    assert {p["spec"]["containers"][0]["image"] for p in pods.values()} == {"busybox:1.36.1"}
    assert len(backend.events(name, "SpecChangeIgnored")) <= 1
    backend.delete("mljobs", name)


def test_a_job_created_suspended_waits_without_pods(backend: Backend):
    name = "rp-born-suspended"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Run(0, 0.2),))}, run_policy={"suspend": True}))
    backend.wait_phase(name, "Suspended")
    backend.messages(name, "Suspended")  # the pass that decided is over: had it created pods, they would be here
    assert backend.pod_names(name) == []
    backend.patch("mljobs", name, {"spec": {"runPolicy": {"suspend": False}}})
    backend.wait_phase(name, "Succeeded")


def test_deleting_the_job_deletes_its_children(backend: Backend):
    name = "rp-cascade"
    backend.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))}))
    backend.wait_phase(name, "Running")
    backend.delete("mljobs", name)
    backend.wait(lambda: backend.get("mljobs", name) is None, what="job gone")
    backend.wait(
        lambda: (
            not [o for r in ("pods", "services") for o in backend.list(r) if o["metadata"]["name"].startswith(name)]
        ),
        what="children garbage-collected",
    )


def test_a_pod_with_forged_labels_is_never_counted_adopted_or_deleted(backend: Backend):
    name = "rp-forged"
    stranger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-worker-7",
            "labels": {"mljob.io/job-name": name, "mljob.io/replica-type": "worker", "mljob.io/replica-index": "0"},
        },
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]},
    }
    backend.create("pods", stranger)
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Run(0, 0.5),))}, run_policy={"cleanPodPolicy": "All"}))
    status = backend.wait_phase(name, "Succeeded")
    assert status["replicaStatuses"]["Worker"] == {"active": 0, "succeeded": 1, "failed": 0, "restarts": 0}
    backend.wait(lambda: backend.pod_names(name) == [], what="own pods cleaned up")
    backend.messages(name, "Succeeded", f"pod {name}-worker-0")  # the cleanup pass is over
    kept = backend.get("pods", f"{name}-worker-7")
    assert kept is not None
    assert not kept["metadata"].get("deletionTimestamp")
    backend.delete("pods", f"{name}-worker-7")


INVALID = {
    "unknown-role": ("pytorch", {"Wrker": Role(1)}, "spec.replicaSpecs.Wrker: unknown role 'Wrker'"),
    "unknown-framework": ("caffe", {"Worker": Role(1)}, "spec.framework: unknown framework 'caffe'"),
    "two-masters": ("pytorch", {"Master": Role(2)}, "spec.replicaSpecs.Master.replicas:"),
}


@pytest.mark.parametrize("case", INVALID)
def test_an_invalid_job_fails_with_field_paths_while_others_keep_working(backend: Backend, case):
    bad, good = f"rp-invalid-{case}", f"rp-beside-invalid-{case}"
    framework, roles, message = INVALID[case]
    backend.submit(E2EJob(bad, framework, roles))
    backend.submit(E2EJob(good, "pytorch", {"Worker": Role(1, (Run(0, 0.3),))}))
    status = backend.wait_phase(bad, "Failed")
    assert conditions(status)["Failed"] == ("True", "InvalidSpec")
    assert status["message"].startswith(message), status["message"]
    assert backend.messages(bad, "InvalidSpec") == [status["message"]]
    assert backend.pod_names(bad) == []
    assert backend.wait_phase(good, "Succeeded")["phase"] == "Succeeded"


def test_a_job_the_schema_refuses_is_refused_at_create_with_the_field_path(backend: Backend):
    """The CRD's schema, enforced by the API server: a bad enum never reaches the operator."""
    bad, good = "rp-unparsable", "rp-beside-unparsable"
    with pytest.raises(kubernetes.client.ApiException) as refused:
        backend.submit(E2EJob(bad, "pytorch", {"Worker": Role(1, policy="Sometimes")}))
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert 'spec.replicaSpecs.Worker.restartPolicy: Unsupported value: "Sometimes"' in message, message
    assert backend.get("mljobs", bad) is None
    backend.submit(E2EJob(good, "pytorch", {"Worker": Role(1, (Run(0, 0.3),))}))
    assert backend.wait_phase(good, "Succeeded")["phase"] == "Succeeded"


@pytest.mark.parametrize(("hook", "text"), [("mutate", "refuses to mutate"), ("validate", "divided by zero")])
def test_a_plugin_that_raises_fails_only_its_own_job(backend: Backend, hook, text):
    bad, good = f"rp-plugin-{hook}", f"rp-beside-plugin-{hook}"
    backend.submit(E2EJob(bad, "tensorflow", {"Worker": Role(1)}, annotations={"e2e.mljob.io/raise": hook}))
    backend.submit(E2EJob(good, "tensorflow", {"Worker": Role(1, (Run(0, 0.3),))}))
    status = backend.wait_phase(bad, "Failed")
    assert conditions(status)["Failed"] == ("True", "PluginError")
    assert "e2e-raising" in status["message"]
    assert text in status["message"]
    assert backend.pod_names(bad) == []
    assert backend.wait_phase(good, "Succeeded")["phase"] == "Succeeded"


def test_a_stranger_holding_a_pod_name_is_reported_and_the_job_goes_on_once_it_is_gone(backend: Backend):
    name = "rp-name-taken"
    stranger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-worker-0", "labels": {"mljob.io/job-name": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]},
    }
    backend.create("pods", stranger)
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Run(0, 0.3),))}))
    event = backend.wait(lambda: backend.events(name, "NameTaken"), what="NameTaken event")
    assert event[0]["message"].startswith(f"pod {name}-worker-0 exists and is not controlled by this job")
    assert backend.phase(name) == "Pending"
    backend.delete("pods", f"{name}-worker-0")
    assert backend.wait_phase(name, "Succeeded", timeout=backend.timeout + 30)["phase"] == "Succeeded"
    assert len(backend.events(name, "NameTaken")) == 1
