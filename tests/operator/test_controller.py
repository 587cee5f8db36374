"""The controller without kopf or HTTP: a fake API records every call, so order and retries are visible."""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mljob.core.status import LEDGER_ANNOTATION
from mljob.kube import ApiError
from mljob.operator.controller import Controller
from mljob.operator.metrics import Metrics
from mljob.plugin_testing import plugins_for

UID = "job-uid"


def job_body(rv: int = 1, **run_policy: Any) -> dict[str, Any]:
    container = {"name": "pytorch", "image": "busybox"}
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": str(rv)},
        "spec": {
            "framework": "pytorch",
            "replicaSpecs": {"Worker": {"replicas": 2, "template": {"spec": {"containers": [container]}}}},
            "runPolicy": run_policy,
        },
    }


class FakeApi:
    """Applies writes to an in-memory job and pod list; ``fail`` makes the next calls of a verb raise."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = copy.deepcopy(job)
        self.pods: dict[str, dict[str, Any]] = {}
        self.service: dict[str, Any] | None = None
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[int]] = {}
        self.events: list[tuple[str, str]] = []
        self.phantom_conflicts = 0
        """Creates answered "already exists" without creating anything (an injected 409)."""

    def _maybe_fail(self, verb: str) -> None:
        codes = self.fail.get(verb)
        if codes:
            raise ApiError(codes.pop(0), "Injected", "fault", verb)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("create", obj["metadata"]["name"]))
        self._maybe_fail("create")
        if self.phantom_conflicts and obj["kind"] == "Pod":
            self.phantom_conflicts -= 1
            return None
        made = copy.deepcopy(obj)
        made["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"
        if obj["kind"] == "Service":
            if self.service is not None:
                return None
            self.service = made
        elif obj["metadata"]["name"] in self.pods:
            return None
        else:
            self.pods[obj["metadata"]["name"]] = made
        return made

    async def get(self, kind: str, namespace: str, name: str, api_version: str = "v1") -> dict[str, Any] | None:
        return self.pods.get(name)

    async def delete(self, kind: str, namespace: str, name: str, uid: str, api_version: str = "v1") -> bool:
        self.calls.append(("delete", name))
        self._maybe_fail("delete")
        if kind == "Service":
            existed, self.service = self.service is not None, None
            return existed
        return self.pods.pop(name, None) is not None

    async def patch_job(self, namespace, name, rv, patch, status=False, kind=None) -> dict[str, Any]:
        self.calls.append(("patch-status" if status else "patch", str(rv)))
        self._maybe_fail("patch")
        if rv != self.job["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "stale", "PATCH")
        if status:
            self.job["status"] = {**(self.job.get("status") or {}), **patch["status"]}
            self.job["status"] = {k: v for k, v in self.job["status"].items() if v is not None}
        else:
            self.job["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        self.job["metadata"]["resourceVersion"] = str(int(rv) + 1)
        return copy.deepcopy(self.job)

    async def delete_job(self, namespace: str, name: str, uid: str, kind: Any = None) -> bool:
        self.calls.append(("delete-job", name))
        return True

    async def event(self, job, type: str, reason: str, message: str) -> None:
        self.calls.append(("event", reason))
        self.events.append((reason, message))


async def started(api: FakeApi, **kw: Any) -> Controller:
    c = Controller(api, plugins_for(*_pytorch()), Metrics(), debounce=0.01, **kw)  # type: ignore[arg-type]
    c.bind(lambda key: (list(api.pods.values()), api.service))
    await c.start()
    return c


def _pytorch():
    from mljob_pytorch import PyTorch  # the installed plugin; the controller itself never imports one

    return [PyTorch()]


async def settle(c: Controller, api: FakeApi, seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)


@pytest.mark.asyncio
async def test_a_burst_of_triggers_is_one_pass_and_writes_come_in_plan_order():
    api = FakeApi(job_body())
    c = await started(api)
    try:
        for _ in range(20):
            c.job_event(None, api.job)
        await settle(c, api)
        assert c.passes == 1
        verbs = [v for v, _ in api.calls]
        assert verbs[0] == "patch-status"  # the status, with the job's rv as a precondition, before any child
        assert api.calls[0] == ("patch-status", "1")
        assert verbs.index("event") > verbs.index("patch-status")
        assert sorted(n for v, n in api.calls if v == "create") == ["j", "j-worker-0", "j-worker-1"]
        assert LEDGER_ANNOTATION not in api.job["metadata"].get("annotations", {})  # written at a restart only
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_a_finishing_pass_says_the_end_and_its_cleanup_in_one_event_after_the_deletes():
    api = FakeApi(job_body(cleanPodPolicy="All"))
    c = await started(api)
    try:
        c.job_event(None, api.job)
        await settle(c, api)
        assert [reason for reason, _ in api.events] == ["Created"]  # every pod and the service: one event
        for pod in api.pods.values():
            pod["status"] = {"phase": "Succeeded"}
        api.calls.clear()
        api.events.clear()
        c.job_event("MODIFIED", copy.deepcopy(api.job))
        await settle(c, api)
        assert api.job["status"]["phase"] == "Succeeded"
        cleanup = "deleted pod j-worker-0, pod j-worker-1, service j: cleanPodPolicy All: the job finished"
        assert api.events == [("Succeeded", f"the job succeeded; {cleanup}")]
        verbs = [v for v, _ in api.calls]
        assert verbs.index("event") > max(i for i, v in enumerate(verbs) if v == "delete")
        finished = {"framework": "pytorch", "namespace": "ns", "outcome": "Succeeded", "reason": "Succeeded"}
        assert c.metrics.sample("mljob_jobs_finished_total", **finished) == 1
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_an_unchanged_job_makes_no_calls():
    api = FakeApi(job_body())
    c = await started(api)
    try:
        c.job_event(None, api.job)
        await settle(c, api)
        c.job_event("MODIFIED", api.job)  # the echo of our own write
        await settle(c, api)
        c.job_event("MODIFIED", api.job)
        await settle(c, api)
        calls = len(api.calls)
        c.job_event("MODIFIED", api.job)
        await settle(c, api)
        assert len(api.calls) == calls
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_a_conflict_is_retried_with_the_newer_job():
    api = FakeApi(job_body())
    c = await started(api)
    try:
        stale = copy.deepcopy(api.job)
        api.job["metadata"]["resourceVersion"] = "5"  # someone wrote in between
        c.job_event(None, stale)
        await settle(c, api)
        assert ("patch-status", "1") in api.calls
        assert not api.pods
        c.job_event("MODIFIED", copy.deepcopy(api.job))
        await settle(c, api, 0.5)
        assert len(api.pods) == 2
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_server_errors_are_retried_with_backoff_until_the_job_converges():
    api = FakeApi(job_body())
    api.fail = {"create": [500, 429], "patch": [503]}
    c = await started(api)
    try:
        c.job_event(None, api.job)
        await asyncio.sleep(2.0)
        assert sorted(api.pods) == ["j-worker-0", "j-worker-1"]
        assert c.metrics.sample("mljob_api_errors_total", status="503") == 1
        assert c.metrics.sample("mljob_reconcile_duration_seconds_count", result="error") >= 2
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_a_create_refused_as_existing_for_a_pod_that_is_not_there_is_retried():
    api = FakeApi(job_body())
    api.phantom_conflicts = 2
    c = await started(api)
    try:
        c.job_event(None, api.job)
        for _ in range(40):  # no further event arrives: only the controller's retry can create them
            if len(api.pods) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(api.pods) == ["j-worker-0", "j-worker-1"]
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_a_create_refused_because_our_own_pod_exists_is_done_not_an_error():
    """The index lags (a restarted operator, a lost watch event): AlreadyExists for our own pod is success."""
    api = FakeApi(job_body())
    c = Controller(api, plugins_for(*_pytorch()), Metrics(), debounce=0.01)  # type: ignore[arg-type]
    c.bind(lambda key: ([], api.service))  # the watch has not shown the pods yet
    await c.start()
    try:
        for i in range(2):
            await api.create(
                {
                    "kind": "Pod",
                    "metadata": {
                        "name": f"j-worker-{i}",
                        "ownerReferences": [
                            {
                                "apiVersion": "mljob.io/v1alpha1",
                                "kind": "MLJob",
                                "name": "j",
                                "uid": UID,
                                "controller": True,
                            }
                        ],
                    },
                }
            )
        api.calls.clear()
        c.job_event(None, api.job)
        await settle(c, api, 0.5)
        assert c.passes == 1  # no retry was scheduled
        assert sorted(n for v, n in api.calls if v == "create") == ["j", "j-worker-0", "j-worker-1"]
        assert ("event", "NameTaken") not in api.calls
        assert c.metrics.sample("mljob_reconcile_duration_seconds_count", result="ok") == 1
        assert c.metrics.sample("mljob_pods_created_total", framework="pytorch", namespace="ns") == 0
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_the_deadline_wakes_the_job_without_any_event():
    # The status keeps startTime to the second: a clock that starts on a whole second keeps the
    # deadline exactly one second after the first pass, however late in a second the test starts.
    base, origin = datetime(2030, 1, 1, tzinfo=UTC), time.monotonic()
    api = FakeApi(job_body(activeDeadlineSeconds=1))
    c = await started(api, clock=lambda: base + timedelta(seconds=time.monotonic() - origin))
    try:
        c.job_event(None, api.job)
        await settle(c, api)
        for pod in api.pods.values():
            pod["status"] = {"phase": "Running", "containerStatuses": [{"name": "pytorch", "state": {"running": {}}}]}
        c.job_event("MODIFIED", copy.deepcopy(api.job))
        await settle(c, api)
        assert api.job["status"]["phase"] == "Running"
        passes = c.passes
        for _ in range(50):  # no event arrives from here on: only the controller's timer can end the job
            if api.job["status"]["phase"] == "Failed":
                break
            await asyncio.sleep(0.1)
        assert api.job["status"]["phase"] == "Failed", api.job["status"]
        assert next(c for c in api.job["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
        assert c.passes == passes + 1  # exactly one pass, woken by the timer: no polling
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_a_plugin_that_blows_up_fails_only_its_job():
    api = FakeApi(job_body())
    c = await started(api)

    def explode(job, plugins, placement=None, limits=None, kind=None, endpoint=None):
        raise RuntimeError("unexpected")

    import mljob.operator.controller as controller_module

    original = controller_module.desire
    controller_module.desire = explode  # type: ignore[assignment]
    try:
        c.job_event(None, api.job)
        await settle(c, api)
        assert api.job["status"]["phase"] == "Failed"
        assert "RuntimeError: unexpected" in api.job["status"]["message"]
        assert next(c for c in api.job["status"]["conditions"] if c["type"] == "Failed")["reason"] == "PluginError"
    finally:
        controller_module.desire = original
        await c.stop()


@pytest.mark.asyncio
async def test_an_older_job_event_does_not_replace_a_newer_body():
    api = FakeApi(job_body(rv=7))
    c = await started(api)
    try:
        c.job_event(None, job_body(rv=7))
        c.job_event("MODIFIED", job_body(rv=6))
        assert c.jobs[("ns", "j")]["metadata"]["resourceVersion"] == "7"
        c.job_event("DELETED", job_body(rv=8))
        assert ("ns", "j") not in c.jobs
    finally:
        await c.stop()


def test_the_clock_is_injectable():
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    c = Controller(FakeApi(job_body()), plugins_for(), Metrics(), clock=lambda: moment)  # type: ignore[arg-type]
    assert c.clock() - moment == timedelta(0)


@pytest.mark.asyncio
async def test_a_pod_deleted_by_someone_else_before_the_index_showed_it_is_created_again():
    """Seen on the real control plane: kwok deleted a recreated pod by name before the operator's index had it.

    The create expectation made the pod count as present; only the watch's DELETED event ends it now.
    """
    api = FakeApi(job_body())
    c = Controller(api, plugins_for(*_pytorch()), Metrics(), debounce=0.01)  # type: ignore[arg-type]
    shown: dict[str, dict[str, Any]] = {}
    c.bind(lambda key: (list(shown.values()), api.service))  # the index: only what the watch has shown
    await c.start()
    try:
        c.job_event(None, api.job)
        await settle(c, api)
        assert sorted(api.pods) == ["j-worker-0", "j-worker-1"]
        gone = api.pods.pop("j-worker-0")  # deleted by a stranger before its ADDED event came
        shown["j-worker-1"] = api.pods["j-worker-1"]
        api.calls.clear()
        c.expectations.observed(("ns", "j"), "Pod", gone)  # the DELETED event, as operator.pod_event passes it on
        c.trigger(("ns", "j"))
        await settle(c, api)
        assert ("create", "j-worker-0") in api.calls
        assert "j-worker-0" in api.pods
    finally:
        await c.stop()


def test_expectations_end_when_the_watch_shows_the_object_and_say_when_they_lapse():
    from mljob.operator.expectations import Expectations

    now = [100.0]
    e = Expectations(ttl=15.0, clock=lambda: now[0])
    key = ("ns", "j")
    pod = {"metadata": {"name": "p", "uid": "u1"}}
    assert e.expires_in(key) is None
    e.created(key, "Pod", pod)
    now[0] = 104.0
    assert e.expires_in(key) == 11.0
    assert [p["metadata"]["name"] for p in e.view(key, [], None)[0]] == ["p"]  # counts as present meanwhile
    e.observed(key, "Pod", {"metadata": {"name": "p", "uid": "other"}})  # a namesake: not ours
    assert len(e) == 1
    e.observed(key, "Pod", pod)
    assert len(e) == 0
    assert e.view(key, [], None)[0] == []
