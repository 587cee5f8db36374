"""Feeding the pure planner and applying its plans: a per-job work queue with wake-up timers.

kopf delivers the jobs' events (:mod:`~mljob.operator.handlers`), :mod:`~mljob.operator.informer` their
children's; this module turns them into at most one reconcile pass per job at a time, coalesces bursts (a
job's N pods start within milliseconds of each other), applies each :class:`~mljob.core.plan.Plan` through
:mod:`mljob.kube`, and schedules the next pass only when the plan asks for one (a deadline, a TTL) or a pass
failed (backoff). There is no polling: a job with nothing to do has no timer and makes no request.

It does not import kopf, so it is tested with a fake API and no operator machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from mljob.api import MLJob
from mljob.core import children as podlib
from mljob.core.desired import Desired, Placement, desire, reject
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.kueue import KUEUE_API, flavor_names, prebuilt_workload
from mljob.core.names import Key
from mljob.core.plan import Delete, Plan
from mljob.core.progress import Endpoint
from mljob.core.reconcile import plan
from mljob.core.render import JOB_OBJECT_KINDS, owner_reference
from mljob.core.validation import DEFAULT_LIMITS, PLUGIN_ERROR, Limits, parse_job
from mljob.framework import Problem
from mljob.kube import Api, ApiError
from mljob.operator.expectations import Expectations
from mljob.operator.metrics import Metrics
from mljob.plugins import Plugins

logger = logging.getLogger("mljob.operator")

Children = Callable[[Key], tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]]
"""The pods and the service(s) the watch stream holds for a job."""
Placed = Callable[[Key], Mapping[str, Mapping[str, Any]]]
"""The job's objects a scheduler or queue writes status on (Kueue's Workload, Volcano's PodGroup), by kind."""


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _rv(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Controller:
    """Reconciles every job it is told about; one pass per job at a time, many jobs concurrently."""

    def __init__(
        self,
        api: Api,
        plugins: Plugins,
        metrics: Metrics | None = None,
        *,
        workers: int = 16,
        debounce: float = 0.05,
        clock: Callable[[], datetime] = utcnow,
        placement: Placement | None = None,
        limits: Limits = DEFAULT_LIMITS,
        kind: JobKind = MLJOB,
    ) -> None:
        """``kind``: the API kind this controller serves (one controller per kind; MLJob unless told)."""
        self.api, self.plugins, self.metrics = api, plugins, metrics or Metrics()
        self.kind = kind
        self.placement = placement or Placement()
        self.limits = limits
        self.endpoint: Endpoint | None = None
        """Where MLJobs' pods report progress, when the operator serves it (set before the watch starts)."""
        self.clock = clock
        self.debounce = debounce
        self.jobs: dict[Key, Mapping[str, Any]] = {}
        """The newest body of every job, from the watch stream or from our own writes' responses."""
        self._children: Children = lambda key: ((), ())
        self._placed: Placed = lambda key: {}
        self._flavors: dict[str, Mapping[str, Any]] = {}
        self._n_workers = workers
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: Counter[Key] = Counter()
        self._desired: dict[Key, tuple[tuple[str, int | None], Desired]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._clashes: set[tuple[Key, str, str]] = set()
        self._made: dict[Key, set[tuple[str, str, str]]] = {}
        """The per-job objects (a framework's ConfigMaps and Secrets) known to exist, by job: (job uid, kind,
        name). They are not watched, so the planner asks for them whenever pods are missing; asked once each."""
        self._refusals: dict[Key, str] = {}
        """Why the API server refused a child of the job in its last pass: the next pass's plan says it."""
        self.expectations = Expectations()
        self.passes = 0
        self.ready: Callable[[], Awaitable[object]] | None = None
        """Awaited before every pass: the watches of the children filled, this replica not paused by peering."""
        self.metrics.watch_phases(self._phases)

    # --- wiring ------------------------------------------------------------------------------------

    def bind(self, children: Children, placed: Placed | None = None) -> None:
        """Where the job's pods and service, and its placement objects, come from (the operator's watches)."""
        self._children = children
        if placed is not None:
            self._placed = placed

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"mljob-worker-{i}") for i in range(self._n_workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --- events ------------------------------------------------------------------------------------

    def job_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event for a job: remember the newest body and reconcile the job.

        A job whose ``managedBy`` names another controller (MultiKueue's, another operator's) is never touched.
        """
        key = key_of(body)
        if event_type == "DELETED" or self.kind.managed_elsewhere(body):
            self.forget(key)
            return
        known = self.jobs.get(key)
        if known is not None and _uid(known) == _uid(body):
            old_rv, new_rv = _rv(known), _rv(body)
            if old_rv is not None and new_rv is not None and new_rv < old_rv:
                return  # an older version than one our own write already returned
        self.jobs[key] = lean(body)
        self.trigger(key)

    def forget(self, key: Key) -> None:
        self.jobs.pop(key, None)
        self._desired.pop(key, None)
        self._made.pop(key, None)
        self._failures.pop(key, None)
        self.expectations.forget(key)
        self._refusals.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def trigger(self, key: Key, delay: float | None = None) -> None:
        """Reconcile ``key`` soon; triggers that arrive while it waits or runs are folded into one pass."""
        if key in self._active:
            self._again.add(key)
            return
        if key in self._pending:
            return
        self._pending.add(key)
        wait = self.debounce if delay is None else delay
        asyncio.get_running_loop().call_later(wait, self._queue.put_nowait, key)

    def _wake(self, key: Key, when: datetime | None) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if when is None:
            return
        delay = max(0.0, (when - self.clock()).total_seconds()) + 0.01
        # Debounced like any other trigger: a pod event that comes with the deadline (an operator that was
        # paused, a busy loop) is in the same pass, so the rulebook weighs both.
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self.trigger, key)

    def _retry(self, key: Key) -> None:
        self._failures[key] += 1
        n = self._failures[key]
        delay = min(30.0, 0.1 * 2 ** min(n - 1, 10)) * random.uniform(0.8, 1.2)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self.trigger, key, 0.0)

    # --- work --------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            if self.ready is not None:
                await self.ready()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await self._pass(key)
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.trigger(key)

    async def _pass(self, key: Key) -> None:
        """One reconcile of one job; whatever goes wrong stays with this job and is retried."""
        started = time.perf_counter()
        result = "ok"
        try:
            await self.reconcile(key)
            self._failures.pop(key, None)
            self._refusals.pop(key, None)
        except NameTaken:
            result = "error"
            self._retry(key)
        except ApiError as error:
            result = "conflict" if error.conflict else "error"
            self.metrics.api_error(error.status)
            log = logger.debug if error.conflict else logger.warning
            log("%s/%s: %s; retrying", *key, error)
            self._retry(key)
        except Exception:
            result = "error"
            logger.exception("%s/%s: reconcile failed; retrying", *key)
            self._retry(key)
        finally:
            self.metrics.reconciled(time.perf_counter() - started, result)

    def _desire(self, key: Key, job: MLJob) -> Desired:
        """Check and render once per spec generation: validation and rendering are the costly part."""
        version = (job.metadata.uid or "", job.metadata.generation)
        cached = self._desired.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            desired = desire(job, self.plugins, self.placement, self.limits, self.kind, self.endpoint)
        except Exception as error:  # a plugin bug that escaped the core's own guards
            problem = Problem("", f"{type(error).__name__}: {error}")
            desired = Desired(None, problems=(problem,), reason=PLUGIN_ERROR, kind=self.kind)
        self._desired[key] = (version, desired)
        return desired

    async def reconcile(self, key: Key) -> Plan | None:
        body = self.jobs.get(key)
        if body is None:
            return None
        self.passes += 1
        now = self.clock()
        view, problems = self.kind.view(body)
        job, unparsed = parse_job(view)
        problems = [*problems, *(Problem(self.kind.path_of(p.path), p.message) for p in unparsed)]
        if job is None or problems:
            result = reject(view, problems, now)
            framework = "unknown"
        else:
            desired = self._desire(key, job)
            pods, services = self.expectations.view(key, *self._children(key))
            placed = self._placed(key)
            if "Workload" not in placed and prebuilt_workload(job) is not None and self.kind.owns_workload:
                await self._adopt(job, str(prebuilt_workload(job)))
            flavors = await self._resource_flavors(placed.get("Workload"))
            result = plan(job, desired, pods, services, now, placed, flavors, self._refusals.get(key))
            framework = desired.framework.name if desired.framework is not None else "unknown"
        if self.kind is not MLJOB:  # the status in the kind's own shape
            result = dataclasses.replace(result, status=self.kind.status_patch(body, result.status, now))
        await self.apply(key, body, result, framework)
        if finished(self.jobs.get(key) or body):
            self._desired.pop(key, None)  # a finished job creates nothing more: no rendering kept for it
        return result

    async def _adopt(self, job: MLJob, name: str) -> None:
        """On a worker cluster, make the Workload MultiKueue created for ``job`` the job's: a controller
        ownerReference, as Kueue's job controllers set on a prebuilt Workload. Its watch event then brings it to the
        job's pass; until then the job waits, saying so. One another controller owns is left alone."""
        found = await self.api.get("Workload", job.namespace, name, KUEUE_API)
        if found is None:
            return  # MultiKueue creates it before the job: a watch event of it will come
        meta = found.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        if any(ref.get("controller") for ref in refs):
            if not any(ref.get("uid") == job.metadata.uid for ref in refs):
                logger.warning("%s/%s: Workload %s has another controller: not adopted", job.namespace, job.name, name)
            return
        owner = owner_reference(job, job.metadata.uid, self.kind)
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "ownerReferences": [*refs, owner]}}
        try:
            await self.api.patch(KUEUE_API, "Workload", job.namespace, name, patch)
        except ApiError as error:
            if error.status != 409:  # a concurrent change: the next pass tries again
                raise
            return
        logger.info("%s/%s: adopted Workload %s, which MultiKueue made for the job", job.namespace, job.name, name)

    async def _resource_flavors(self, workload: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
        """The ResourceFlavors a Kueue admission names: their node labels and tolerations steer the pods.

        Read when an admission names one not seen before; a flavor's labels do not change under an admitted
        workload (Kueue forbids editing a flavor in use), so they are kept for the operator's life.
        """
        names = flavor_names(workload)
        for name in names - self._flavors.keys():
            found = await self.api.get_cluster_object(KUEUE_API, "resourceflavors", name)
            if found is not None:
                self._flavors[name] = found
        return {name: self._flavors[name] for name in names if name in self._flavors}

    async def apply(self, key: Key, body: Mapping[str, Any], result: Plan, framework: str) -> None:
        """Ledger, status, events, deletes, creates, job deletion: the order :class:`Plan` documents.

        The creates and deletes of a pass are summed up in one event per reason and why (``Created``,
        ``Deleted``); a finishing pass's deletes (its cleanup) go into its terminal event instead.
        """
        namespace, name = key
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if result.annotations:
            patch = {"metadata": {"annotations": result.annotations}}
            fresh = await self.api.patch_job(namespace, name, rv, patch, kind=self.kind)
            self._remember(key, fresh)
            rv = (fresh.get("metadata") or {}).get("resourceVersion", rv)
        if result.status is not None:
            fresh = await self.api.patch_job(
                namespace, name, rv, {"status": result.status}, status=True, kind=self.kind
            )
            self._remember(key, fresh)
            self._log_status(key, body, result)
        for event in result.events:
            if not event.closing:  # the terminal event waits for the cleanup, to name it
                await self._event(body, event.type, event.reason, event.message)
        closing = [e for e in result.events if e.closing]
        try:
            errors, summaries = await self._act(key, body, result, framework)
        except Exception:
            for event in closing:  # the job's end is said even when what follows it failed
                await self._event(body, event.type, event.reason, event.message)
            raise
        for event in closing:
            cleanup = [message for reason, message in summaries if reason == "Deleted"]
            await self._event(body, event.type, event.reason, "; ".join([event.message, *cleanup]))
        for reason, message in summaries:
            if not (closing and reason == "Deleted"):
                await self._event(body, "Normal", reason, message)
        if result.delete_job:
            uid = _uid(body)
            if await self.api.delete_job(namespace, name, uid, self.kind):
                logger.info("%s/%s: deleted the job: ttlSecondsAfterFinished passed", namespace, name)
        if errors:
            raise errors[0]
        when = result.wake_at
        lapse = self.expectations.expires_in(key)
        if lapse is not None:  # a lost or never-coming watch event must not hold the job past the lapse
            at = self.clock() + timedelta(seconds=lapse + 0.05)
            when = at if when is None else min(when, at)
        self._wake(key, when)

    async def _act(
        self, key: Key, body: Mapping[str, Any], result: Plan, framework: str
    ) -> tuple[list[BaseException], list[tuple[str, str]]]:
        """The plan's Workload status patches, metrics, creates and deletes: their errors and summaries."""
        namespace = key[0]
        for patch in result.patches:  # Kueue's Workload: PodsReady, Finished, an eviction's admission cleared
            await self.api.patch_status(
                patch.api_version, patch.kind, namespace, patch.name, patch.resource_version, patch.status
            )
            logger.info("%s/%s: %s %s status: %s", *key, patch.kind.lower(), patch.name, patch.why)
        self.metrics.restarts(framework, namespace, result.restarts)
        if result.accepted:
            self.metrics.job_accepted(framework, namespace)
        if result.running_after is not None:
            self.metrics.job_running(framework, result.running_after)
        if result.finished is not None:
            reason = next((e.reason for e in result.events if e.closing), "")
            self.metrics.job_finished(framework, namespace, result.finished.value, reason)
        # What a gang scheduler reads (a PodGroup) exists before any pod that names it is created.
        children = ("Pod", "Service")
        grouped = [obj for obj in result.creates if obj["kind"] not in children]
        outcomes: list[Any] = list(
            await asyncio.gather(*(self._create(key, body, obj, framework) for obj in grouped), return_exceptions=True)
        )
        for obj in result.updates:  # after their creates: a gang's PodGroup follows the job's spec
            if not any(isinstance(o, BaseException) for o in outcomes):
                outcomes += await asyncio.gather(self._update(key, obj), return_exceptions=True)
        if not any(isinstance(o, BaseException) for o in outcomes):
            outcomes += await asyncio.gather(
                *(self._delete(key, d, framework) for d in result.deletes),
                *(self._create(key, body, obj, framework) for obj in result.creates if obj["kind"] in children),
                return_exceptions=True,
            )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        done = [o for o in outcomes if isinstance(o, str)]
        return errors, list(_summaries(done))

    async def _update(self, key: Key, obj: Mapping[str, Any]) -> None:
        """Merge-patch the spec of an object the job owns; one that is gone is the next pass's to create."""
        meta = obj["metadata"]
        patch = {"spec": obj["spec"]}
        if await self.api.patch(str(obj["apiVersion"]), str(obj["kind"]), key[0], str(meta["name"]), patch):
            logger.info("%s/%s: updated %s %s: the job's spec changed", *key, str(obj["kind"]).lower(), meta["name"])

    def _remember(self, key: Key, fresh: Mapping[str, Any]) -> None:
        if fresh.get("metadata") and key in self.jobs:
            self.jobs[key] = lean(fresh)

    async def _event(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        try:
            await self.api.event(body, type, reason, message)
        except ApiError as error:  # events are best effort, like the kubelet's own
            self.metrics.api_error(error.status)
            logger.debug("%s/%s: event %s not posted: %s", *key_of(body), reason, error)

    async def _delete(self, key: Key, d: Delete, framework: str) -> str | None:
        """Delete one child; returns ``Deleted|<what>: <why>`` for the pass's summary event."""
        if not await self.api.delete(d.kind, key[0], d.name, d.uid, d.api_version):
            return None
        if d.kind in ("Pod", "Service"):
            self.expectations.deleted(key, d.kind, d.name, d.uid)
        logger.info("%s/%s: deleted %s %s (%s)", *key, d.kind.lower(), d.name, d.why)
        if d.kind == "Pod":
            self.metrics.pod_deleted(framework, key[0], _delete_reason(d.why))
        return f"Deleted|{d.why}|{d.kind.lower()} {d.name}"

    async def _create(self, key: Key, body: Mapping[str, Any], obj: Mapping[str, Any], framework: str) -> str | None:
        """Create one child; returns ``Created||<what>`` for the pass's summary event."""
        kind, child = str(obj["kind"]), str(obj["metadata"]["name"])
        made_once = (_uid(body), kind, child)
        if kind in JOB_OBJECT_KINDS and made_once in self._made.get(key, ()):
            return None  # a framework's per-job object, made (or found) in an earlier pass
        try:
            made = await self.api.create(obj)
        except ApiError as error:
            if error.status in (400, 403, 404, 422):  # refused as asked (a missing PriorityClass, CRD, quota)
                self._refused(key, f"could not create {kind.lower()} {child}: {error.message}")
            raise
        if kind in JOB_OBJECT_KINDS and (made is not None or kind == "Secret"):
            # A Secret that exists is taken as the job's: the operator's role may create Secrets but not read them
            # (least privilege), so an existing one (a user's own SSH keys, say) is used as it is.
            self._made.setdefault(key, set()).add(made_once)
            if made is None:
                return None
        if made is not None:
            if kind in ("Pod", "Service"):  # the children the watch shows; a PodGroup is not watched
                self.expectations.created(key, kind, made)
            logger.info("%s/%s: created %s %s", *key, kind.lower(), child)
            if kind == "Pod":
                self.metrics.pods_created(framework, key[0])
            return f"Created||{kind.lower()} {child}"
        # AlreadyExists: usually our own earlier create, not yet in the index. But if the name is
        # held by an object this job does not control, the job cannot go on: say so, once, and
        # look again later (the stranger's deletion is no event this operator watches).
        existing = await self.api.get(kind, key[0], child, str(obj.get("apiVersion") or "v1"))
        if existing is None:
            # Refused as existing, yet gone: deleted in between, or a proxy's bogus 409. No event
            # will tell this job that the name is free, so the pass must be retried.
            raise ApiError(409, "AlreadyExists", f"{kind.lower()} {child} was refused as existing but is gone")
        if podlib.controller_uid(existing) == _uid(body):
            if kind in JOB_OBJECT_KINDS:
                self._made.setdefault(key, set()).add(made_once)
            return None
        clash = (key, child, podlib.uid(existing))
        if clash not in self._clashes:
            self._clashes.add(clash)
            message = f"{kind.lower()} {child} exists and is not controlled by this job; delete it to let the job go on"
            logger.warning("%s/%s: %s", *key, message)
            await self._event(body, "Warning", "NameTaken", message)
        raise NameTaken(f"{kind.lower()} {child} is held by another owner")

    def _refused(self, key: Key, message: str) -> None:
        """Keep why a child is refused: the retried pass's plan puts it in the job's message, with one event."""
        if self._refusals.get(key) != message:
            logger.warning("%s/%s: %s", *key, message)
        self._refusals[key] = message

    def _log_status(self, key: Key, body: Mapping[str, Any], result: Plan) -> None:
        old = str((body.get("status") or {}).get("phase") or "-")
        new = str((result.status or {}).get("phase") or old)
        if new != old:
            message = (result.status or {}).get("message") or (body.get("status") or {}).get("message") or ""
            logger.info("%s/%s: %s -> %s%s", *key, old, new, f" ({message})" if message else "")
        for event in result.events:
            if event.type == "Warning" and event.reason in ("Restarted", "SpecChangeIgnored", "FrameworkMissing"):
                logger.info("%s/%s: %s: %s", *key, event.reason, event.message)

    def _phases(self) -> Iterator[tuple[str, str, str]]:
        for (namespace, _), body in list(self.jobs.items()):
            name = self.kind.framework_of(body)
            framework = name if self.plugins.framework(name) is not None else "unknown"
            yield namespace, framework, self.kind.phase_of(body).value


class NameTaken(Exception):
    """A child's name is held by an object the job does not control; the pass is retried with backoff."""


def _uid(body: Mapping[str, Any]) -> str:
    return podlib.uid(body)


def finished(body: Mapping[str, Any]) -> bool:
    """Whether the job (of any kind: the conditions are the same) has Succeeded or Failed."""
    conditions = (body.get("status") or {}).get("conditions") or ()
    return any(c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions)


def lean(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The job without ``metadata.managedFields``: the planner never reads them, and they mirror every field
    each writer set (the spec's, the status's) in what the operator keeps of every job."""
    meta = body.get("metadata")
    if not isinstance(meta, Mapping) or "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _delete_reason(why: str) -> str:
    """A bounded metric label from a delete's free-text reason."""
    for needle, label in (
        ("recreating", "restart"),
        ("cleanPodPolicy", "cleanup"),
        ("runs until stopped", "stop"),
        ("suspended", "suspend"),
        ("Kueue", "queue"),
    ):
        if needle in why:
            return label
    return "spec"


def _summaries(done: Sequence[str], limit: int = 8) -> Iterator[tuple[str, str]]:
    """One event per (reason, why) for a pass's creates and deletes, not one per child.

    A 1,000-replica job would otherwise post 1,000 events (and cost as many requests) on start.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for item in done:
        reason, why, what = item.split("|", 2)
        groups.setdefault((reason, why), []).append(what)
    for (reason, why), whats in groups.items():
        shown = ", ".join(whats[:limit]) + (f" and {len(whats) - limit} more" if len(whats) > limit else "")
        yield reason, f"{reason.lower()} {shown}" + (f": {why}" if why else "")
