"""Our own writes that the watch stream has not shown yet (client-go calls these expectations).

The planner reads children from the watch-fed index, which lags our own creates and deletes by
the watch round trip. A pass that runs inside that window (woken by the echo of its own status
write, or by a sibling pod's event) would create the same pod again (a wasted request, answered
409) or delete an already deleted one again. The controller overlays what it has just done on
the index for that window: a created child counts as present, a deleted one as terminating.

An expectation ends as soon as the index shows the object in its new state, or after ``ttl``
seconds at the latest, so a lost watch event can never hide the truth for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mljob.core import children as podlib
from mljob.core.names import Key

DELETING = "deleting"
"""The deletionTimestamp an expected deletion shows until the real one arrives."""


class Expectations:
    """Per job: children created and deleted by this process, not yet confirmed by the watch."""

    def __init__(self, ttl: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._created: dict[Key, dict[tuple[str, str], tuple[float, Mapping[str, Any]]]] = {}
        self._deleted: dict[Key, dict[tuple[str, str], tuple[float, str]]] = {}

    def created(self, key: Key, kind: str, obj: Mapping[str, Any]) -> None:
        """``obj`` is the server's answer to the create (it carries the uid)."""
        self._created.setdefault(key, {})[(kind, podlib.name(obj))] = (self.clock(), podlib.slim_of(kind, obj))

    def deleted(self, key: Key, kind: str, name: str, uid: str) -> None:
        self._deleted.setdefault(key, {})[(kind, name)] = (self.clock(), uid)

    def observed(self, key: Key, kind: str, obj: Mapping[str, Any]) -> None:
        """The watch has shown ``obj``, in any state (deleted too): an expectation about it is over.

        Without this, a child created and then deleted by someone else before the index ever showed it
        would count as present until the expectation's ttl, with no event left to wake the job after it.
        """
        which = (kind, podlib.name(obj))
        created = self._created.get(key, {})
        if which in created and podlib.uid(created[which][1]) == podlib.uid(obj):
            del created[which]
        deleted = self._deleted.get(key, {})
        if which in deleted and deleted[which][1] == podlib.uid(obj) and podlib.terminating(obj):
            del deleted[which]

    def expires_in(self, key: Key) -> float | None:
        """Seconds until the job's oldest expectation lapses (the job must be looked at again then), or None."""
        times = [at for at, _ in self._created.get(key, {}).values()]
        times += [at for at, _ in self._deleted.get(key, {}).values()]
        if not times:
            return None
        return max(0.0, min(times) + self.ttl - self.clock())

    def forget(self, key: Key) -> None:
        self._created.pop(key, None)
        self._deleted.pop(key, None)

    def __len__(self) -> int:
        return sum(map(len, self._created.values())) + sum(map(len, self._deleted.values()))

    def view(
        self,
        key: Key,
        pods: Sequence[Mapping[str, Any]],
        services: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """The index's children (pods; the job's service or services) with this process's unconfirmed writes laid
        over them."""
        now = self.clock()
        children: dict[tuple[str, str], Mapping[str, Any]] = {("Pod", podlib.name(p)): p for p in pods}
        if isinstance(services, Mapping):
            services = [services]
        for service in services or ():
            children[("Service", podlib.name(service))] = service
        created = self._created.get(key, {})
        for which, (at, obj) in list(created.items()):
            if which in children or now - at > self.ttl:
                del created[which]  # the watch has caught up (or never will): the index is the truth
            else:
                children[which] = obj
        deleted = self._deleted.get(key, {})
        for which, (at, uid) in list(deleted.items()):
            seen = children.get(which)
            if seen is None or podlib.uid(seen) != uid or podlib.terminating(seen) or now - at > self.ttl:
                del deleted[which]
            else:
                meta = {**(seen.get("metadata") or {}), "deletionTimestamp": DELETING}
                children[which] = {**seen, "metadata": meta}
        for table in (self._created, self._deleted):
            if not table.get(key, True):
                del table[key]
        found = [obj for (kind, _), obj in children.items() if kind == "Service"]
        return [obj for (kind, _), obj in children.items() if kind == "Pod"], found
