"""Run policy: deadline, TTL, cleanPodPolicy on every terminal path, suspend/resume, spec changes, bad jobs."""

from __future__ import annotations

import json

import pytest
from jobkit import Toy, World, make_job, s

from mljob.api import Phase
from mljob.core.names import LABEL_SPEC_HASH
from mljob.core.reconcile import reject
from mljob.core.status import LEDGER_ANNOTATION
from mljob.core.validation import parse_job
from mljob.framework import Replica
from mljob.hookspecs import hookimpl
from mljob.plugin_testing import plugins_for


def running(**policy) -> World:
    w = World(
        make_job()
        .with_replicas("Master", 1)
        .with_replicas("Worker", 2, policy="Never")
        .with_replicas("PS", 1)
        .with_policy(**policy)
    )
    w.step()
    for name in list(w.pods):
        w.put(w.update(name.removeprefix("job-")).running())
    w.step(s(1))
    return w


def test_the_deadline_wakes_the_job_and_fails_it():
    w = running(activeDeadlineSeconds=60)
    assert w.plan(s(30)).wake_at == s(60)
    p = w.step(s(60))
    assert p.finished is Phase.FAILED
    assert w.condition("Failed") == ("True", "DeadlineExceeded")
    assert w.status.message == "activeDeadlineSeconds (60s) passed since startTime 2025-01-01T12:00:00Z"
    assert sorted(d.name for d in p.deletes) == ["job", "job-master-0", "job-ps-0", "job-worker-0", "job-worker-1"]


def test_ttl_deletes_the_job_after_it_finished():
    w = running(ttlSecondsAfterFinished=100)
    for r in ("master-0", "worker-0", "worker-1"):
        w.put(w.update(r).succeeded())
    p = w.step(s(10))
    assert p.finished is Phase.SUCCEEDED
    assert p.wake_at == s(110)
    assert not p.delete_job
    assert w.plan(s(50)).wake_at == s(110)
    assert w.plan(s(110)).delete_job


def test_ttl_zero_deletes_on_the_pass_after_the_status_is_written():
    w = running(ttlSecondsAfterFinished=0)
    w.put(w.update("master-0").succeeded(), w.update("worker-0").succeeded(), w.update("worker-1").succeeded())
    p = w.step(s(10))
    assert not p.delete_job
    assert p.wake_at == s(10)
    assert w.plan(s(10)).delete_job


def finish_by(how: str, w: World) -> None:
    if how == "success":
        for r in ("master-0", "worker-0", "worker-1"):
            w.put(w.update(r).succeeded())
    elif how == "failure":
        w.put(w.update("worker-1").exited(3), w.update("worker-0").succeeded())


CLEANUP = [
    # (path, cleanPodPolicy, pods deleted besides the service)
    ("success", "All", ["job-master-0", "job-ps-0", "job-worker-0", "job-worker-1"]),
    ("success", "Running", ["job-ps-0"]),
    ("success", "None", ["job-ps-0"]),
    ("failure", "All", ["job-master-0", "job-ps-0", "job-worker-0", "job-worker-1"]),
    ("failure", "Running", ["job-master-0", "job-ps-0"]),
    ("failure", "None", ["job-ps-0"]),
]


@pytest.mark.parametrize(("path", "policy", "deleted"), CLEANUP)
def test_clean_pod_policy_on_every_terminal_path(path, policy, deleted):
    w = running(cleanPodPolicy=policy)
    finish_by(path, w)
    p = w.plan(s(5))
    assert p.finished is (Phase.SUCCEEDED if path == "success" else Phase.FAILED)
    assert sorted(d.name for d in p.deletes if d.kind == "Pod") == deleted
    assert [d.name for d in p.deletes if d.kind == "Service"] == ([] if policy == "None" else ["job"])


def test_cleanup_is_kept_true_after_the_job_finished():
    w = running(cleanPodPolicy="All")
    finish_by("success", w)
    w.apply(w.plan(s(5)), children=False)  # the deletes were lost (operator crash)
    p = w.plan(s(6))
    assert len([d for d in p.deletes if d.kind == "Pod"]) == 4
    assert p.status is None
    assert p.events == ()


def test_suspend_deletes_pods_and_resume_recreates_them_with_a_new_start_time():
    w = running(activeDeadlineSeconds=600)
    w.edit(runPolicy={"suspend": True})
    p = w.step(s(10))
    assert sorted(d.name for d in p.deletes) == ["job-master-0", "job-ps-0", "job-worker-0", "job-worker-1"]
    assert w.status.phase is Phase.SUSPENDED
    assert w.condition("Suspended") == ("True", "Suspended")
    assert w.condition("Running") == ("False", "Suspended")
    assert w.status.start_time is None
    assert p.wake_at is None  # no deadline while suspended
    assert w.plan(s(700)).finished is None
    w.edit(runPolicy={"suspend": False})
    p = w.step(s(800))
    assert len(p.creates) == 4  # pods only: the service stayed
    assert w.status.start_time == s(800)
    assert w.condition("Suspended") == ("False", "Resumed")
    assert w.status.phase is Phase.PENDING
    assert p.wake_at == s(1400)


def test_a_job_created_suspended_creates_nothing():
    w = World(make_job().with_replicas("Worker", 2).with_policy(suspend=True))
    p = w.step()
    assert p.creates == ()
    assert w.status.phase is Phase.SUSPENDED
    assert w.condition("Created") is None


def test_a_spec_change_while_suspended_applies_on_resume():
    w = running()
    w.edit(runPolicy={"suspend": True})
    w.step(s(2))
    w.edit(replicaSpecs={"Worker": {"replicas": 3}}, runPolicy={"suspend": False})
    p = w.step(s(3))
    assert sorted(o["metadata"]["name"] for o in p.creates) == [
        "job-master-0",
        "job-ps-0",
        "job-worker-0",
        "job-worker-1",
        "job-worker-2",
    ]


def test_a_spec_change_while_running_is_ignored_with_a_warning():
    w = running()
    w.edit(replicaSpecs={"Worker": {"template": {"metadata": {"labels": {"team": "a"}}}}})
    p = w.step(s(2))
    assert p.creates == ()
    assert p.deletes == ()
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "SpecChangeIgnored")]
    assert w.status.phase is Phase.RUNNING
    assert w.step(s(3)).events == ()  # warned once per generation


def test_a_spec_change_that_would_need_a_new_pod_fails_the_job():
    w = running()
    w.edit(replicaSpecs={"Worker": {"replicas": 3}})
    p = w.step(s(2))
    assert p.finished is Phase.FAILED
    assert w.condition("Failed") == ("True", "SpecChanged")
    assert "job-worker-2" in w.status.message


def test_a_spec_change_is_seen_from_the_pods_by_a_restarted_operator():
    """No ledger was written (no restart): the pods' spec-hash label says which spec the job started with."""
    w = running()
    assert LEDGER_ANNOTATION not in w.job.metadata.annotations
    w.edit(replicaSpecs={"Worker": {"template": {"metadata": {"labels": {"team": "a"}}}}})
    restarted = World(w.job, plugins=w.plugins)
    restarted.pods, restarted.service = w.pods, w.service
    p = restarted.step(s(2))
    assert (p.creates, p.deletes) == ((), ())
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "SpecChangeIgnored")]
    restarted.edit(replicaSpecs={"Worker": {"replicas": 3}})
    restarted.step(s(3))
    assert restarted.condition("Failed") == ("True", "SpecChanged")


def test_a_spec_change_is_refused_while_the_only_pod_is_being_recreated():
    """The pod that carried the fingerprint is gone; the ledger written with the restart keeps it."""
    w = World(make_job().with_replicas("Worker", 1, policy="ExitCode"))
    w.step()
    w.put(w.update("worker-0").running())
    w.step(s(1))
    w.put(w.update("worker-0").exited(137))
    assert [d.name for d in w.step(s(2)).deletes] == ["job-worker-0"]
    assert w.pods == {}
    w.edit(replicaSpecs={"Worker": {"template": {"metadata": {"labels": {"team": "a"}}}}})
    p = w.step(s(3))
    assert p.creates == ()
    assert w.condition("Failed") == ("True", "SpecChanged")


def test_a_ledger_from_an_older_operator_still_holds_the_spec():
    """Pods created before the spec-hash label existed: the ledger written at the job's start says it."""
    w = running()
    for pod in w.pods.values():
        del pod["metadata"]["labels"][LABEL_SPEC_HASH]
    body = w.job.model_dump(mode="json", by_alias=True, exclude_none=True)
    ledger = json.dumps({"spec": w.desired.spec_hash, "restarts": {}, "pods": {}})
    body["metadata"].setdefault("annotations", {})[LEDGER_ANNOTATION] = ledger
    w.job = type(w.job).model_validate(body)
    w.edit(replicaSpecs={"Worker": {"template": {"metadata": {"labels": {"team": "a"}}}}})
    p = w.step(s(2))
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "SpecChangeIgnored")]


def test_an_invalid_job_fails_with_the_field_paths_and_creates_nothing():
    w = World(make_job().with_replicas("Wroker", 2))
    p = w.step()
    assert p.creates == ()
    assert w.condition("Failed") == ("True", "InvalidSpec")
    assert w.status.message.startswith("spec.replicaSpecs.Wroker: unknown role 'Wroker'")
    assert p.finished is Phase.FAILED
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "InvalidSpec")]


def test_an_unknown_framework_fails_a_new_job():
    w = World(make_job(framework="jax").with_replicas("Worker", 1))
    w.step()
    assert w.condition("Failed") == ("True", "InvalidSpec")
    assert "unknown framework 'jax'" in w.status.message


def test_a_framework_missing_from_the_operator_leaves_a_started_job_alone():
    w = running()
    w.plugins = plugins_for()  # the operator was upgraded without the plugin
    p = w.step(s(2))
    assert p.deletes == ()
    assert p.creates == ()
    assert p.finished is None
    assert [e.reason for e in p.events] == ["FrameworkMissing"]
    assert w.status.phase is Phase.RUNNING
    assert w.plan(s(3)).empty


class Raises(Toy):
    name = "raising"

    def __init__(self, where: str) -> None:
        self.where = where

    def env(self, job, replica, cluster):
        if self.where == "env":
            raise RuntimeError("boom in env")
        return {}

    def succeeded(self, job, outcomes):
        if self.where == "succeeded":
            raise ValueError("boom in succeeded")
        return super().succeeded(job, outcomes)


class MutateRaises:
    @hookimpl
    def mljob_mutate_pod(self, job, replica: Replica, pod):
        raise KeyError("sidecar")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("env", "plugin 'raising' failed in env: RuntimeError: boom in env"),
        ("mutate", "failed in mljob_mutate_pod: KeyError: 'sidecar'"),
    ],
)
def test_a_plugin_that_raises_fails_only_its_job_with_plugin_error(where, message):
    loaded = plugins_for(Raises(where))
    if where == "mutate":
        loaded.pm.register(MutateRaises())
    w = World(make_job(framework="raising").with_replicas("Worker", 1), plugins=loaded)
    p = w.step()
    assert p.creates == ()
    assert w.condition("Failed") == ("True", "PluginError")
    assert message in w.status.message


def test_a_success_rule_that_raises_is_a_plugin_error():
    w = World(make_job(framework="raising").with_replicas("Worker", 1), plugins=plugins_for(Raises("succeeded")))
    p = w.step()
    assert w.condition("Failed") == ("True", "PluginError")
    assert "failed in succeeded: ValueError: boom in succeeded" in w.status.message
    assert p.creates == ()


def test_a_finished_job_ignores_suspend():
    w = running()
    finish_by("success", w)
    w.step(s(2))
    w.edit(runPolicy={"suspend": True})
    p = w.step(s(3))
    assert w.status.phase is Phase.SUCCEEDED
    assert p.events == ()


def test_a_body_the_models_reject_fails_once_with_the_field_path():
    """What the CRD schema would refuse (a cluster whose CRD is older, or none): InvalidSpec, then nothing."""
    body = make_job().with_replicas("Worker", 1, policy="Sometimes").body
    job, problems = parse_job(body)
    assert job is None
    p = reject(body, problems, s(0))
    assert p.creates == ()
    assert p.deletes == ()
    assert p.finished is Phase.FAILED
    assert p.status is not None
    assert p.status["phase"] == "Failed"
    assert p.status["message"].startswith("spec.replicaSpecs.Worker.restartPolicy: must be one of")
    assert p.status["observedGeneration"] == 1
    (failed,) = [c for c in p.status["conditions"] if c["type"] == "Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert [(e.type, e.reason, e.message) for e in p.events] == [("Warning", "InvalidSpec", p.status["message"])]
    # The next pass reads the Failed status back: terminal is final, nothing more is written.
    assert reject({**body, "status": p.status}, problems, s(1)).empty
    # Nor is a job that is being deleted touched.
    deleting = {**body, "metadata": {**body["metadata"], "deletionTimestamp": "2025-01-01T12:00:00Z"}}
    assert reject(deleting, problems, s(1)).empty
