"""The change feed: committed writes, filtered watcher queues, and the resumable history.

Each resource keeps its own bounded history (as the API server's watch cache does), so a busy
resource cannot expire a quiet one's resourceVersions, and resuming costs a bisect, not a scan.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections.abc import Callable
from typing import Any

from mljob.testing import resources as res
from mljob.testing.selectors import Matcher

Body = dict[str, Any]


@dataclasses.dataclass(eq=False)
class Change:
    """One committed write, as delivered to watchers, listeners and the resumable history."""

    type: str  # ADDED, MODIFIED, DELETED
    resource: res.ResourceInfo
    rv: int
    obj: Body
    old: Body | None
    _lines: dict[str, bytes] = dataclasses.field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def line(self, event_type: str, encode: Callable[[Any], bytes]) -> bytes:
        """The watch-stream line, encoded once and shared by all watchers."""
        line = self._lines.get(event_type)
        if line is None:
            line = b'{"type":"' + event_type.encode() + b'","object":' + encode(self.obj) + b"}\n"
            self._lines[event_type] = line
        return line


class Watcher:
    """A filtered subscription to one resource; the HTTP watch handler drains its queue."""

    def __init__(self, info: res.ResourceInfo, namespace: str | None, matcher: Matcher | None) -> None:
        self.info = info
        self.namespace = namespace
        self.matcher = matcher
        self.queue: asyncio.Queue[tuple[str, Change] | None] = asyncio.Queue()
        self.abort = False

    def classify(self, change: Change) -> str | None:
        """Which event this watcher sees: a label change can turn MODIFIED into ADDED or DELETED."""
        if self.namespace is not None and change.namespace != self.namespace:
            return None
        if self.matcher is None:
            return change.type
        now = self.matcher(change.obj)
        if change.type != "MODIFIED" or change.old is None:
            return change.type if now else None
        before = self.matcher(change.old)
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        return "DELETED" if before else None

    def offer(self, change: Change) -> None:
        event_type = self.classify(change)
        if event_type is not None:
            self.queue.put_nowait((event_type, change))

    def close(self, *, abort: bool = False) -> None:
        self.abort = abort
        self.queue.put_nowait(None)


class Bucket:
    """All objects of one resource (all versions share it), with its watchers and history."""

    def __init__(self, info: res.ResourceInfo, history_limit: int) -> None:
        self.info = info
        self.by_ns: dict[str, dict[str, Body]] = {}
        self.watchers: set[Watcher] = set()
        self.history: list[Change] = []
        self.start = 0  # history[start:] is the live window; trimmed lazily in amortised O(1).
        self.dropped_rv = 0  # every change with rv <= this is no longer replayable
        self.history_limit = history_limit

    def record(self, change: Change) -> None:
        self.history.append(change)
        if len(self.history) - self.start > self.history_limit:
            self.dropped_rv = self.history[self.start].rv
            self.start += 1
            if self.start >= self.history_limit:
                del self.history[: self.start]
                self.start = 0

    def since(self, rv: int) -> list[Change]:
        index = bisect.bisect_right(self.history, rv, lo=self.start, key=lambda c: c.rv)
        return self.history[index:]

    def count(self) -> int:
        return sum(len(objs) for objs in self.by_ns.values())
