"""Fluent builders for planner tests: ``make_job().with_replicas("Worker", 2)``, ``pod(job, "worker-1").exited(1)``.

The planner is a pure function of plain data, so a scenario is: build a job, build the pods the
watch stream would show, call ``plan``, then ``advance`` the job by the plan's writes and go on.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from mljob.api import MLJob, MLJobStatus
from mljob.core.reconcile import Desired, Plan, desire, plan
from mljob.core.status import merge_diff
from mljob.framework import Framework, Outcome, Replica, Role
from mljob.plugin_testing import plugins_for
from mljob.plugins import Plugins

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "11111111-2222-3333-4444-555555555555"


class Toy(Framework):
    """Master (leader), Worker, PS (runs until stopped): enough to exercise every planner path."""

    name = "toy"
    roles = (
        Role("Master", 1234, leader=True, max_replicas=1),
        Role("Worker", 1234),
        Role("PS", 1234, runs_until_stopped=True),
    )

    def env(self, job: MLJob, replica: Replica, cluster: Any) -> dict[str, str]:
        return {"TOY_RANK": str(replica.index)}


class MasterRules(Toy):
    """Success when the master succeeds, whatever the workers do (TensorFlow's chief rule)."""

    name = "toy-master"

    def succeeded(self, job: MLJob, outcomes: Any) -> bool:
        return any(r.role == "Master" and o is Outcome.SUCCEEDED for r, o in outcomes.items())


def s(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


class JobBuilder:
    def __init__(self, name: str = "job", framework: str = "toy") -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": name, "namespace": "default", "uid": UID, "generation": 1, "resourceVersion": "1"},
            "spec": {"framework": framework, "replicaSpecs": {}, "runPolicy": {}},
        }

    def with_replicas(self, role: str, replicas: int = 1, policy: str | None = None) -> JobBuilder:
        spec: dict[str, Any] = {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "toy", "image": "busybox", "command": ["true"]}]}},
        }
        if policy:
            spec["restartPolicy"] = policy
        self.body["spec"]["replicaSpecs"][role] = spec
        return self

    def with_policy(self, **run_policy: Any) -> JobBuilder:
        self.body["spec"]["runPolicy"].update(run_policy)
        return self

    def build(self) -> MLJob:
        return MLJob.model_validate(copy.deepcopy(self.body))


def make_job(name: str = "job", framework: str = "toy") -> JobBuilder:
    return JobBuilder(name, framework)


class PodBuilder:
    """A pod as the watch stream delivers it; starts as the rendered pod, just created (Pending)."""

    def __init__(self, rendered: dict[str, Any], uid: str) -> None:
        self.body = copy.deepcopy(rendered)
        self.body["metadata"]["uid"] = uid
        self.body["status"] = {"phase": "Pending"}

    def _containers(self, state: dict[str, Any], restarts: int = 0, last: dict[str, Any] | None = None) -> None:
        statuses = []
        for c in self.body["spec"]["containers"]:
            status: dict[str, Any] = {"name": c["name"], "state": state, "restartCount": restarts}
            if last:
                status["lastState"] = last
            statuses.append(status)
        self.body["status"]["containerStatuses"] = statuses

    def running(self) -> PodBuilder:
        self.body["status"]["phase"] = "Running"
        self._containers({"running": {}})
        return self

    def waiting(self, reason: str) -> PodBuilder:
        self._containers({"waiting": {"reason": reason}})
        return self

    def unschedulable(self, message: str) -> PodBuilder:
        """The scheduler could not place it: PodScheduled False, with the scheduler's words."""
        self.body["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        }
        return self

    def exited(self, code: int, reason: str | None = None) -> PodBuilder:
        self.body["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        why = reason or ("Completed" if code == 0 else "Error")
        self._containers({"terminated": {"exitCode": code, "reason": why}})
        return self

    def succeeded(self) -> PodBuilder:
        return self.exited(0)

    def restarted(self, times: int, code: int = 1, reason: str = "Error", crashloop: bool = False) -> PodBuilder:
        """Running again (or in CrashLoopBackOff) after ``times`` in-place restarts."""
        self.body["status"]["phase"] = "Running"
        state = {"waiting": {"reason": "CrashLoopBackOff"}} if crashloop else {"running": {}}
        self._containers(state, times, {"terminated": {"exitCode": code, "reason": reason}})
        return self

    def evicted(self) -> PodBuilder:
        self.body["status"].update(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
        self._containers({"terminated": {"exitCode": 137, "reason": "Error"}})
        return self

    def lost_node(self) -> PodBuilder:
        self.body["status"].update(phase="Unknown", reason="NodeLost", message="node is unresponsive")
        return self

    def terminating(self) -> PodBuilder:
        self.body["metadata"]["deletionTimestamp"] = "2025-01-01T12:00:00Z"
        return self

    def owned_by(self, uid: str | None) -> PodBuilder:
        if uid is None:
            self.body["metadata"].pop("ownerReferences", None)
        else:
            self.body["metadata"]["ownerReferences"][0]["uid"] = uid
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


class World:
    """A job, its plugins and the pods the watch stream shows: plan, then advance by the plan's writes."""

    def __init__(self, job: JobBuilder | MLJob, *frameworks: Framework, plugins: Plugins | None = None) -> None:
        self.job = job.build() if isinstance(job, JobBuilder) else job
        self.plugins = plugins or plugins_for(*(frameworks or (Toy(), MasterRules())))
        self.pods: dict[str, dict[str, Any]] = {}
        self.service: dict[str, Any] | None = None
        self._uids = 0

    @property
    def desired(self) -> Desired:
        return desire(self.job, self.plugins)

    def rendered(self, short: str) -> dict[str, Any]:
        """The rendered pod for ``worker-1`` (role lower-case, index)."""
        name = f"{self.job.name}-{short}"
        for p in self.desired.pods:
            if p["metadata"]["name"] == name:
                return p
        raise KeyError(name)

    def pod(self, short: str) -> PodBuilder:
        """A fresh incarnation (new uid) of the rendered pod ``short``."""
        self._uids += 1
        return PodBuilder(self.rendered(short), f"pod-uid-{self._uids}")

    def put(self, *pods: PodBuilder | dict[str, Any]) -> World:
        for p in pods:
            body = p.build() if isinstance(p, PodBuilder) else p
            self.pods[body["metadata"]["name"]] = body
        return self

    def update(self, short: str) -> PodBuilder:
        """The current incarnation of ``short``, to change its status (same uid)."""
        builder = PodBuilder.__new__(PodBuilder)
        builder.body = copy.deepcopy(self.pods[f"{self.job.name}-{short}"])
        return builder

    def plan(self, now: datetime = T0) -> Plan:
        return plan(self.job, self.desired, list(self.pods.values()), self.service, now)

    def apply(self, result: Plan, *, children: bool = True) -> World:
        """The API server's view after the plan: status and ledger written; creates/deletes done when ``children``."""
        body = self.job.model_dump(mode="json", by_alias=True, exclude_none=True)
        if result.annotations:
            body["metadata"].setdefault("annotations", {}).update(result.annotations)
        if result.status is not None:
            body["status"] = _merge(body.get("status") or {}, result.status)
        self.job = MLJob.model_validate(body)
        if children:
            for d in result.deletes:
                if d.kind == "Pod":
                    self.pods.pop(d.name, None)
                else:
                    self.service = None
            for obj in result.creates:
                if obj["kind"] == "Service":
                    self.service = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "uid": "svc-uid"}}
                elif obj["kind"] == "Pod":  # not a plugin's objects (MPI's ConfigMap and Secret): not watched
                    self._uids += 1
                    self.put(PodBuilder(obj, f"pod-uid-{self._uids}"))
        return self

    def step(self, now: datetime = T0) -> Plan:
        """Plan and apply; returns the plan."""
        result = self.plan(now)
        self.apply(result)
        return result

    def edit(self, **spec: Any) -> World:
        """Change the spec the way ``kubectl edit`` would: generation + 1."""
        body = self.job.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["spec"] = _merge(body["spec"], spec)
        body["metadata"]["generation"] += 1
        self.job = MLJob.model_validate(body)
        return self

    @property
    def status(self) -> MLJobStatus:
        assert self.job.status is not None
        return self.job.status

    def condition(self, kind: str) -> tuple[str, str] | None:
        for c in self.status.conditions:
            if c.type == kind:
                return c.status, c.reason
        return None


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


__all__ = ["T0", "UID", "JobBuilder", "MasterRules", "PodBuilder", "Toy", "World", "make_job", "merge_diff", "s"]
