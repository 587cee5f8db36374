"""The operator's own watches of what its jobs own: pods, services, and the objects a scheduler or queue writes.

kopf watched these before, one handler call per event, and its per-event path (cause detection, kwargs, loggers,
the index handler and the event handler of every pod event) cost more than the rest of the operator for what is
here a dict update and a wake-up (bench/README.md has the profile). A job's N pods send some 4N events while it
starts and ends; the job itself a handful, which kopf still handles (:mod:`mljob.operator.handlers`).

What is kept is what the planner reads (:func:`~mljob.core.children.slim_pod`, :func:`~mljob.core.children.slim`),
keyed by (namespace, job name) from the controller ownerReference, so a pass reads its job's children without a LIST,
and nothing else is held: not the pods' specs, images or addresses, not other controllers' pods. The watches
select ``mljob.io/job-name`` (every child mljob renders carries it), so the API server sends nothing about other
pods; a child whose label someone removes is no longer seen, as with a ReplicaSet's selector. The
ownerReference, not the label, decides whose child it is.

:class:`ChildIndex` is pure and tested without a server; :class:`Informer` feeds it from
:func:`mljob.kube.inform`, one list-then-watch per namespace watched (one for all namespaces, filtered here
when the operator was given patterns like ``team-*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mljob.core import children as podlib
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.names import Key
from mljob.kube import SYNC, Api, inform
from mljob.operator.discovery import watched_placement

if TYPE_CHECKING:
    from mljob.operator.controller import Controller

logger = logging.getLogger("mljob.operator")

Changed = Callable[[str, Key, Mapping[str, Any] | None], None]
"""Told (kind, job, object) for every event of a job's child; the object is None after a relist."""


def _where(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class ChildIndex:
    """One kind's objects that a job of ``owner`` kind (an MLJob) controls, slimmed, by (namespace, job name)."""

    def __init__(
        self, slim: Callable[[Mapping[str, Any]], dict[str, Any]] = podlib.slim, owner: JobKind = MLJOB
    ) -> None:
        self.slim = slim
        self.owner = owner
        self._by_job: dict[Key, dict[str, dict[str, Any]]] = {}
        self._job_of: dict[tuple[str, str], Key] = {}
        """(namespace, name) -> the job it is indexed under: an ownerReference can be edited away."""

    def get(self, key: Key) -> list[dict[str, Any]]:
        return list(self._by_job.get(key, {}).values())

    def __len__(self) -> int:
        return len(self._job_of)

    def apply(self, event: str, obj: Mapping[str, Any]) -> list[Key]:
        """One watch event; the jobs whose children it changed (the old and the new owner when it moved)."""
        namespace, name = _where(obj)
        touched: list[Key] = []
        before = self._job_of.pop((namespace, name), None)
        if before is not None:
            self._remove(before, name)
            touched.append(before)
        owner = podlib.controller_name(obj, self.owner)
        if owner is None:
            return touched
        key = (namespace, owner)
        if event != "DELETED":
            self._by_job.setdefault(key, {})[name] = self.slim(obj)
            self._job_of[(namespace, name)] = key
        if key not in touched:
            touched.append(key)
        return touched

    def replace(self, items: Iterable[Mapping[str, Any]], namespace: str | None = None) -> list[Key]:
        """A (re)list of ``namespace`` (None: of all): the jobs whose children differ from what was indexed."""
        old = {where: key for where, key in self._job_of.items() if namespace is None or where[0] == namespace}
        versions = {where: _version(self._by_job[key][where[1]]) for where, key in old.items()}
        for where, key in old.items():
            del self._job_of[where]
            self._remove(key, where[1])
        touched: set[Key] = set()
        seen: set[tuple[str, str]] = set()
        for obj in items:
            owner = podlib.controller_name(obj, self.owner)
            if owner is None:
                continue
            where = _where(obj)
            key = (where[0], owner)
            seen.add(where)
            self._by_job.setdefault(key, {})[where[1]] = self.slim(obj)
            self._job_of[where] = key
            if old.get(where) != key or versions.get(where) != _version(obj):
                touched.add(key)
                if where in old:
                    touched.add(old[where])
        touched.update(key for where, key in old.items() if where not in seen)
        return sorted(touched)

    def _remove(self, key: Key, name: str) -> None:
        children = self._by_job.get(key)
        if children is not None:
            children.pop(name, None)
            if not children:
                del self._by_job[key]


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def namespace_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """kopf's namespace patterns as the operator takes them: globs, ``a,b`` lists, ``!x`` exclusions."""
    parts = [p.strip() for pattern in patterns for p in pattern.split(",") if p.strip()]
    include = [p for p in parts if not p.startswith("!")]
    exclude = [p[1:] for p in parts if p.startswith("!")]

    def matches(namespace: str) -> bool:
        wanted = not include or any(fnmatch.fnmatchcase(namespace, p) for p in include)
        return wanted and not any(fnmatch.fnmatchcase(namespace, p) for p in exclude)

    return matches


def is_pattern(namespace: str) -> bool:
    return any(c in namespace for c in "*?[],!")


class Informer:
    """Lists and watches one kind of child in the namespaces watched, into a :class:`ChildIndex`."""

    def __init__(
        self,
        api: Api,
        kind: str,
        group_version: str,
        plural: str,
        namespaces: Sequence[str] | None,
        changed: Changed,
        owner: JobKind = MLJOB,
    ) -> None:
        """``namespaces`` None: every namespace; names and patterns otherwise (patterns: one cluster-wide watch).

        ``owner``: the kind of job whose children these are (its label selector, its ownerReferences).
        """
        self.kind, self.api, self.changed, self.owner = kind, api, changed, owner
        self.index = ChildIndex(functools.partial(podlib.slim_of, kind), owner)
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        if namespaces is None or any(is_pattern(ns) for ns in namespaces):
            self._paths: list[tuple[str, str | None]] = [(f"{base}/{plural}", None)]
            self._wanted = namespace_matcher(namespaces or ())
        else:
            self._paths = [(f"{base}/namespaces/{ns}/{plural}", ns) for ns in dict.fromkeys(namespaces)]
            self._wanted = lambda namespace: True
        self.synced = asyncio.Event()
        """Set once every watched namespace has been listed: before that, a pass could miss a child."""
        self._listed: set[str] = set()

    async def run(self) -> None:
        """Every watch at once, until cancelled."""
        tasks = [asyncio.create_task(self._follow(path, ns), name=f"watch {path}") for path, ns in self._paths]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """What a list keeps of an object: the slim copy of a child of a job in a namespace watched."""
        if podlib.controller_name(obj, self.owner) is None or not self._wanted(_where(obj)[0]):
            return None
        return self.index.slim(obj)

    async def _follow(self, path: str, namespace: str | None) -> None:
        params = {"labelSelector": self.owner.selector()}
        async for event, payload in inform(self.api, path, params, what=f"{self.kind.lower()}s", keep=self._keep):
            if event == SYNC:
                touched = self.index.replace(payload, namespace)
                first = path not in self._listed
                self._listed.add(path)
                if len(self._listed) == len(self._paths):
                    self.synced.set()
                if not first:  # a relist after a lost watch: wake the jobs whose children changed meanwhile
                    for key in touched:
                        self.changed(self.kind, key, None)
                continue
            if not self._wanted(_where(payload)[0]):
                continue
            for key in self.index.apply(event, payload):
                self.changed(self.kind, key, payload)


def informers(controller: Controller, namespaces: Sequence[str] | None) -> list[Informer]:
    """The watches of every kind a job owns and the planner reads, bound to ``controller``.

    Every event of a job's child wakes the job, and ends the controller's expectation about that child.
    """

    def changed(kind: str, key: Key, obj: Mapping[str, Any] | None) -> None:
        if obj is not None and kind in ("Pod", "Service"):
            controller.expectations.observed(key, kind, obj)
        controller.trigger(key)

    placement = [
        w for w in watched_placement(controller.placement) if w[0] != "Workload" or controller.kind.owns_workload
    ]
    kinds = [("Pod", "v1", "pods"), ("Service", "v1", "services"), *placement]
    owner = controller.kind
    watches = {
        kind: Informer(controller.api, kind, gv, plural, namespaces, changed, owner) for kind, gv, plural in kinds
    }

    def children(key: Key) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        return list(watches["Pod"].index.get(key)), list(watches["Service"].index.get(key))

    def placed(key: Key) -> dict[str, Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        for kind, *_ in kinds[2:]:
            for obj in watches[kind].index.get(key):
                found[kind] = obj
        return found

    controller.bind(children, placed)
    return list(watches.values())
