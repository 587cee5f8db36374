"""A simulated kubelet: moves pods through their phases on a script the test controls.

An operator for training jobs reacts to pod phases, exit codes, restarts, evictions and lost
nodes; without a cluster nothing would ever change a pod's status. This kubelet works on the
emulator's store in-process (no HTTP, so it costs no API requests in the accounting) and
writes pod status the way the real kubelet does, including ``restartCount``/``lastState`` for
in-place restarts and graceful termination of deleted pods.

    kubelet = Kubelet(emu, default=succeed(after=0.1))   # every pod succeeds after 0.1 s
    kubelet.script("worker-1", fail(code=1), succeed())    # first run fails, the restart succeeds
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from mljob.testing.errors import ApiError
from mljob.testing.store import Store, now_rfc3339
from mljob.testing.watch import Body, Change

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Exit:
    """All containers exit with ``code`` after running ``after`` seconds."""

    code: int = 0
    after: float = 0.1
    reason: str | None = None  # default: Completed for 0, Error otherwise

    @property
    def termination_reason(self) -> str:
        return self.reason or ("Completed" if self.code == 0 else "Error")


@dataclasses.dataclass(frozen=True)
class RunForever:
    """The containers keep running until the pod is deleted or the test acts on it."""


@dataclasses.dataclass(frozen=True)
class Evict:
    """The kubelet evicts the pod (node pressure): phase Failed, reason Evicted, never restarted."""

    after: float = 0.1
    message: str = "The node was low on resource: memory."


@dataclasses.dataclass(frozen=True)
class LoseNode:
    """The node stops reporting: phase Unknown, reason NodeLost; deleting it never completes."""

    after: float = 0.1


@dataclasses.dataclass(frozen=True)
class Unschedulable:
    """The pod is never scheduled: it stays Pending with PodScheduled=False."""

    message: str = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


Outcome = Exit | RunForever | Evict | LoseNode | Unschedulable
PodMatcher = str | Callable[[Body], bool]


def succeed(after: float = 0.1) -> Exit:
    return Exit(0, after)


def fail(code: int = 1, after: float = 0.1, reason: str | None = None) -> Exit:
    return Exit(code, after, reason)


def oom_killed(after: float = 0.1) -> Exit:
    return Exit(137, after, "OOMKilled")


class _Pod:
    """The kubelet's own record of one pod (by uid: a recreated pod with the same name is new)."""

    def __init__(self, namespace: str, name: str, uid: str, outcomes: Iterator[Outcome]) -> None:
        self.namespace, self.name, self.uid = namespace, name, uid
        self.outcomes = outcomes
        self.forced: Outcome | None = None
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.terminating = False
        self.ip = ""


class Kubelet:
    """Drives pod status for every pod (or those in ``namespace``) of an emulator's store."""

    def __init__(
        self,
        target: Any,
        *,
        default: Outcome | None = None,
        start_delay: float = 0.0,
        restart_delay: float = 0.0,
        termination_delay: float | None = None,
        node_name: str = "emulated-node",
        namespace: str | None = None,
    ) -> None:
        """``target`` is a ``KubeEmulator`` or a ``Store``.

        ``termination_delay=None`` lets the API remove deleted pods at once; a number makes deleted
        pods linger with a deletionTimestamp that long, as a real kubelet's graceful shutdown does.
        """
        self.store: Store = getattr(target, "store", target)
        self.default: Outcome = default if default is not None else RunForever()
        self.start_delay = start_delay
        self.restart_delay = restart_delay
        self.termination_delay = termination_delay
        self.node_name = node_name
        self.namespace = namespace
        self.starts: Counter[str] = Counter()  # container runs started, by pod name
        self._scripts: list[tuple[PodMatcher, tuple[Outcome, ...]]] = []
        self._pods: dict[str, _Pod] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._ips = itertools.count(10)

    # --- control -----------------------------------------------------------------------------------

    def script(self, match: PodMatcher, *outcomes: Outcome) -> None:
        """Script pods matching a name (glob) or predicate: one outcome per run, the last repeats.

        Later scripts win over earlier ones; a pod reads its script once, when first seen.
        """
        if not outcomes:
            raise ValueError("script() needs at least one outcome")
        self._scripts.insert(0, (match, outcomes))

    def exit(self, name: str, code: int = 0, namespace: str = "default", reason: str | None = None) -> None:
        """Make the running containers of a pod exit now; the restart policy decides what follows."""
        self._force(namespace, name, Exit(code, 0.0, reason))

    def evict(self, name: str, namespace: str = "default", message: str = Evict.message) -> None:
        self._force(namespace, name, Evict(0.0, message))

    def lose_node(self, name: str, namespace: str = "default") -> None:
        self._force(namespace, name, LoseNode(0.0))

    def _force(self, namespace: str, name: str, outcome: Outcome) -> None:
        for pod in self._pods.values():
            if pod.namespace == namespace and pod.name == name:
                pod.forced = outcome
                pod.wakeup.set()
                return
        raise LookupError(f"the kubelet does not run pod {namespace}/{name}")

    async def start(self) -> Kubelet:
        self.store.graceful_pods = self.termination_delay is not None
        self._unsubscribe = self.store.subscribe(self._on_change)
        for pod in self.store.iter_objects(self.store.resolve("pods"), self.namespace):
            self._adopt(pod)
        return self

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.store.graceful_pods = False
        tasks = [pod.task for pod in self._pods.values() if pod.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pods.clear()

    async def __aenter__(self) -> Kubelet:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- reacting to the store ---------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        if change.resource.key != ("", "pods"):
            return
        if self.namespace is not None and change.namespace != self.namespace:
            return
        uid = change.obj["metadata"]["uid"]
        if change.type == "DELETED":
            pod = self._pods.pop(uid, None)
            if pod is not None and pod.task is not None:
                pod.task.cancel()
        elif change.type == "ADDED":
            self._adopt(change.obj)
        elif "deletionTimestamp" in change.obj["metadata"]:
            pod = self._pods.get(uid)
            if pod is not None and not pod.terminating and not pod.lost:
                pod.terminating = True
                if pod.task is not None:
                    pod.task.cancel()
                pod.task = asyncio.get_running_loop().create_task(self._terminate(pod))

    def _adopt(self, obj: Body) -> None:
        md = obj["metadata"]
        if md["uid"] in self._pods or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        pod = _Pod(md["namespace"], md["name"], md["uid"], self._outcomes_for(obj))
        self._pods[pod.uid] = pod
        pod.task = asyncio.get_running_loop().create_task(self._lifecycle(pod))

    def _outcomes_for(self, obj: Body) -> Iterator[Outcome]:
        name = obj["metadata"]["name"]
        for match, outcomes in self._scripts:
            if match(obj) if callable(match) else fnmatch.fnmatchcase(name, match):
                return itertools.chain(outcomes, itertools.repeat(outcomes[-1]))
        return itertools.repeat(self.default)

    # --- the pod lifecycle -------------------------------------------------------------------------

    def _read(self, pod: _Pod) -> Body | None:
        current = self.store.get("pods", pod.name, pod.namespace)
        if current is None or current["metadata"]["uid"] != pod.uid:
            return None
        return current

    def _write(self, pod: _Pod, status: Body) -> bool:
        """Write the status if the pod is still this pod; False means stop managing it."""
        if self._read(pod) is None:
            return False
        try:
            self.store.update_status("pods", pod.name, status, pod.namespace)
        except ApiError:
            return False
        return True

    async def _sleep(self, pod: _Pod, seconds: float | None) -> None:
        """Sleep, but wake early when the test forces an outcome."""
        if pod.forced is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pod.wakeup.wait(), seconds)
        pod.wakeup.clear()

    async def _lifecycle(self, pod: _Pod) -> None:
        try:
            await self._run(pod)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("kubelet failed on pod %s/%s", pod.namespace, pod.name)

    async def _run(self, pod: _Pod) -> None:
        obj = self._read(pod)
        if obj is None:
            return
        outcome = next(pod.outcomes)
        if isinstance(outcome, Unschedulable):
            cond = _condition("PodScheduled", False, "Unschedulable", outcome.message)
            self._write(pod, {"phase": "Pending", "conditions": [cond]})
            return
        if not (obj.get("spec") or {}).get("nodeName"):
            self.store.bind_pod(pod.name, pod.namespace, self.node_name)
        n = next(self._ips)
        pod.ip = f"10.244.{n // 250}.{n % 250 + 2}"
        started = now_rfc3339()
        status: Body = {
            "phase": "Pending",
            "hostIP": "10.0.0.2",
            "startTime": started,
            "qosClass": "BestEffort",
            "conditions": [_condition("PodScheduled", True)],
            "containerStatuses": _containers(obj, {"waiting": {"reason": "ContainerCreating"}}, 0),
        }
        if not self._write(pod, status):
            return
        await self._sleep(pod, self.start_delay)
        restarts, last_state = 0, None
        while True:
            obj = self._read(pod)
            if obj is None:
                return
            run_started = now_rfc3339()
            self.starts[pod.name] += 1
            running = {"running": {"startedAt": run_started}}
            status = {
                **status,
                "phase": "Running",
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "conditions": _conditions(ready=True),
                "containerStatuses": _containers(obj, running, restarts, last_state, ready=True),
            }
            if (obj.get("spec") or {}).get("initContainers"):
                done = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started,
                        "finishedAt": run_started,
                    }
                }
                status["initContainerStatuses"] = _containers(obj, done, 0, key="initContainers")
            if not self._write(pod, status):
                return
            if restarts:
                outcome = next(pod.outcomes)
            while True:
                await self._sleep(pod, outcome.after if isinstance(outcome, Exit | Evict | LoseNode) else None)
                if pod.forced is not None:
                    outcome, pod.forced = pod.forced, None
                if isinstance(outcome, Exit | Evict | LoseNode):
                    break
            if isinstance(outcome, Evict):
                killed = _terminated(137, "Error", run_started)
                self._write(
                    pod,
                    {
                        **status,
                        "phase": "Failed",
                        "reason": "Evicted",
                        "message": outcome.message,
                        "conditions": _conditions(ready=False),
                        "containerStatuses": _containers(obj, killed, restarts, last_state),
                    },
                )
                return
            if isinstance(outcome, LoseNode):
                pod.lost = True
                self._write(
                    pod,
                    {
                        **status,
                        "phase": "Unknown",
                        "reason": "NodeLost",
                        "message": f"Node {self.node_name} which was running pod {pod.name} is unresponsive",
                        "conditions": _conditions(ready=False, reason="NodeLost"),
                    },
                )
                return
            terminated = _terminated(outcome.code, outcome.termination_reason, run_started)
            policy = (obj.get("spec") or {}).get("restartPolicy", "Always")
            if policy == "Always" or (policy == "OnFailure" and outcome.code != 0):
                restarts += 1
                last_state = terminated
                if self.restart_delay > 0:
                    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
                    status = {
                        **status,
                        "conditions": _conditions(ready=False),
                        "containerStatuses": _containers(obj, waiting, restarts, last_state),
                    }
                    if not self._write(pod, status):
                        return
                    await self._sleep(pod, self.restart_delay)
                continue
            phase = "Succeeded" if outcome.code == 0 else "Failed"
            self._write(
                pod,
                {
                    **status,
                    "phase": phase,
                    "conditions": _conditions(ready=False, reason="PodCompleted"),
                    "containerStatuses": _containers(obj, terminated, restarts, last_state),
                },
            )
            return

    async def _terminate(self, pod: _Pod) -> None:
        """Shutdown of a deleted pod: SIGTERM, a short wait, terminal status, then the final delete.

        Pods reach here when graceful deletion is on, or when finalizers hold a deleted pod.
        """
        try:
            await asyncio.sleep(self.termination_delay or 0.0)
            obj = self._read(pod)
            if obj is None:
                return
            status = dict(obj.get("status") or {})
            if status.get("phase") not in ("Succeeded", "Failed"):
                started = status.get("startTime", now_rfc3339())
                killed = _terminated(143, "Error", started)
                restarts = max((c.get("restartCount", 0) for c in status.get("containerStatuses", [])), default=0)
                self._write(
                    pod,
                    {
                        **status,
                        "phase": "Failed",
                        "conditions": _conditions(ready=False),
                        "containerStatuses": _containers(obj, killed, restarts),
                    },
                )
            with contextlib.suppress(ApiError):
                self.store.delete("pods", pod.name, pod.namespace, grace_period_seconds=0)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("kubelet failed to terminate pod %s/%s", pod.namespace, pod.name)


def _condition(kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> Body:
    cond: Body = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now_rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _conditions(*, ready: bool, reason: str | None = None) -> list[Body]:
    not_ready = None if ready else (reason or "ContainersNotReady")
    return [
        _condition("PodScheduled", True),
        _condition("Initialized", True),
        _condition("ContainersReady", ready, not_ready),
        _condition("Ready", ready, not_ready),
    ]


def _terminated(code: int, reason: str, started: str) -> Body:
    return {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339()}}


def _containers(
    pod: Body,
    state: Body,
    restarts: int,
    last_state: Body | None = None,
    *,
    ready: bool = False,
    key: str = "containers",
) -> list[Body]:
    uid = pod["metadata"]["uid"]
    return [
        {
            "name": c.get("name", "main"),
            "image": c.get("image", ""),
            "imageID": f"emulated://{c.get('image', '')}",
            "containerID": f"emulated://{uid}/{c.get('name', 'main')}/{restarts}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": restarts,
            "state": state,
            "lastState": last_state or {},
        }
        for c in (pod.get("spec") or {}).get(key) or [{"name": "main"}]
    ]
