"""What the head-to-head bench sees: watch streams read into a timeline, and a process's CPU and memory from /proc.

Every time is the bench's own monotonic clock at the moment a watch event arrived, for all three sides alike, so
a watch's delay is in every figure in the same way. A pod or job belongs to the job its controller
ownerReference names, whichever operator made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mljob.kube import Api, ApiError

TICKS = os.sysconf("SC_CLK_TCK")


def owner(obj: Mapping[str, Any]) -> str | None:
    """The name of the object's controller (its job), or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("name"))
    return None


async def watch(
    api: Api, path: str, handle: Callable[[str, dict[str, Any]], None], stop: asyncio.Event, params: str = ""
) -> None:
    """LIST ``path``, then follow its watch until ``stop``; every object reaches ``handle(type, object)`` in order.

    A watch that ends is resumed from the last resourceVersion; one that has expired (410) starts over from a LIST.
    """
    version = ""
    while not stop.is_set():
        try:
            if not version:
                listed = await api.request("GET", f"{path}?{params}")
                for item in listed.get("items") or ():
                    handle("ADDED", item)
                version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
            query = f"watch=1&resourceVersion={version}&timeoutSeconds=300&allowWatchBookmarks=true"
            if params:
                query += f"&{params}"
            async with api._client().get(
                api.credentials.server + f"{path}?{query}",
                headers={"Accept": "application/json", **_auth(api)},
                timeout=None,  # type: ignore[arg-type]
            ) as response:
                if response.status >= 400:
                    raise ApiError(response.status, response.reason or "", await response.text())
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # expired: start over from a LIST
                            raise ApiError(int(obj.get("code") or 410), "Expired", str(obj.get("message")))
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event.get("type") != "BOOKMARK":
                            handle(str(event.get("type")), obj)
                    if stop.is_set():
                        return
        except (TimeoutError, ApiError, OSError, ValueError) as error:
            if stop.is_set():
                return
            if isinstance(error, ApiError) and error.status == 410:
                version = ""
            await asyncio.sleep(0.2)


def _auth(api: Api) -> dict[str, str]:
    value = api.credentials.authorization()
    return {"Authorization": value} if value else {}


@dataclass
class JobTrack:
    """One job as the bench saw it."""

    created: float
    replicas: int
    phases: dict[str, float] = field(default_factory=dict)
    """When each phase was first seen."""
    status_changes: int = 0
    """Versions whose status differed from the version before (what a person watching would see change)."""
    last_status: str = ""
    pods_created: dict[str, float] = field(default_factory=dict)
    pods_running: dict[str, float] = field(default_factory=dict)
    pods_finished: dict[str, float] = field(default_factory=dict)

    @property
    def first_pod(self) -> float | None:
        return min(self.pods_created.values()) if self.pods_created else None

    @property
    def all_running(self) -> float | None:
        return max(self.pods_running.values()) if len(self.pods_running) >= self.replicas else None


@dataclass
class Timeline:
    """Jobs, their pods and services, fed by :func:`watch`; ``phase_of`` reads a job's phase (each API its own)."""

    phase_of: Callable[[Mapping[str, Any]], str]
    replicas: Callable[[Mapping[str, Any]], int]
    jobs: dict[str, JobTrack] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _early: dict[str, list[tuple[str, dict[str, Any], float]]] = field(default_factory=dict)
    """Pod events that arrived before their job was known (another stream, read first), replayed when it is."""

    def expect(self, name: str, replicas: int) -> None:
        """The bench created the job ``name`` just now (its create was answered)."""
        now = time.monotonic()
        track = self.jobs.get(name)
        if track is None:
            self._track(name, JobTrack(now, replicas))
        else:
            track.created = min(track.created, now)

    def _track(self, name: str, track: JobTrack) -> JobTrack:
        self.jobs[name] = track
        for kind, obj, at in self._early.pop(name, ()):
            self._pod(track, kind, obj, at)
        return track

    def job(self, kind: str, obj: dict[str, Any]) -> None:
        name, now = str(obj["metadata"]["name"]), time.monotonic()
        if kind == "DELETED":
            return
        track = self.jobs.get(name) or self._track(name, JobTrack(now, self.replicas(obj)))
        status = json.dumps(obj.get("status") or {}, sort_keys=True)
        if status != track.last_status:
            if track.last_status or obj.get("status"):
                track.status_changes += 1
            track.last_status = status
        phase = self.phase_of(obj)
        if phase:
            track.phases.setdefault(phase, now)
        self.changed.set()

    def pod(self, kind: str, obj: dict[str, Any]) -> None:
        job, now = owner(obj), time.monotonic()
        if job is None or kind == "DELETED":
            return
        track = self.jobs.get(job)
        if track is None:
            self._early.setdefault(job, []).append((kind, obj, now))
            return
        self._pod(track, kind, obj, now)

    def _pod(self, track: JobTrack, kind: str, obj: dict[str, Any], now: float) -> None:
        name = str(obj["metadata"]["name"])
        track.pods_created.setdefault(name, now)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Running":
            track.pods_running.setdefault(name, now)
        elif phase in ("Succeeded", "Failed"):
            track.pods_running.setdefault(name, now)
            track.pods_finished.setdefault(name, now)
        self.changed.set()

    def service(self, kind: str, obj: dict[str, Any]) -> None:
        name = f"{obj['metadata']['name']}"
        if kind == "DELETED":
            self.services.discard(name)
        else:
            self.services.add(name)
        self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Wait until ``done()`` holds (checked on every change); the monotonic time it first held."""
        deadline = time.monotonic() + timeout
        while not done():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return time.monotonic()


def follow(api: Api, timeline: Timeline, job_path: str, namespace: str, stop: asyncio.Event) -> list[Awaitable[None]]:
    """The three watches a timeline needs: the jobs, their pods, their services."""
    core = f"/api/v1/namespaces/{namespace}"
    return [
        watch(api, job_path, timeline.job, stop),
        watch(api, f"{core}/pods", timeline.pod, stop),
        watch(api, f"{core}/services", timeline.service, stop),
    ]


@dataclass(frozen=True)
class Usage:
    """A process's CPU time so far and its memory, from /proc."""

    cpu: float
    """User + system seconds, every thread."""
    rss: int
    """Resident bytes now."""
    peak_rss: int
    """The highest resident bytes it has had (VmHWM)."""


def usage(pid: int) -> Usage:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)

    def kib(key: str) -> int:
        return int(status.get(key, "0 kB").split()[0]) * 1024

    return Usage(cpu, kib("VmRSS"), kib("VmHWM"))


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
