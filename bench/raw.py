"""The raw limit: the least an operator of MLJobs could send, as a process the head-to-head bench starts.

    KUBECONFIG=... python bench/raw.py

Two watches (MLJobs and pods, every namespace) and, per job, exactly what mljob's operator sends on the happy
path: when the job appears, its rendered pods and its service (mljob's own render, so the bodies are the same)
and a status write; when every pod runs, a status write; when every pod has finished, a status write and the
service's delete. All through mljob's client (mljob/kube/api.py ``Api``) at the operator's concurrency (its default,
mljob.kube.CONCURRENCY: 16 requests in flight). No kopf, no index, no planner, no events: what is left is what
the API server, the scheduler and kwok take on this machine, plus one event loop's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from observe import owner, watch

from mljob.api import format_time
from mljob.core.desired import desire
from mljob.core.validation import parse_job
from mljob.kube import Api, Credentials, job_path
from mljob.plugins import load_plugins


@dataclass
class Job:
    namespace: str
    name: str
    replicas: int
    phase: str = "Pending"
    running: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)


class Raw:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.plugins = load_plugins()
        self.jobs: dict[tuple[str, str], Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def job_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        if kind != "ADDED" or key in self.jobs or (obj.get("status") or {}).get("phase"):
            return
        job, problems = parse_job(obj)
        desired = desire(job, self.plugins) if job is not None else None
        if desired is None or not desired.ok or desired.service is None:
            print(f"{key}: not rendered: {problems or (desired.problems if desired else '')}", file=sys.stderr)
            return
        self.jobs[key] = Job(*key, replicas=len(desired.pods))
        self.spawn(self.start(key, [desired.service, *desired.pods]))

    async def start(self, key: tuple[str, str], children: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.api.create(child) for child in children))
        await self.status(key, "Pending")

    def pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = owner(obj)
        job = self.jobs.get((str(obj["metadata"].get("namespace")), name or ""))
        if job is None or kind == "DELETED":
            return
        pod, phase = str(obj["metadata"]["name"]), (obj.get("status") or {}).get("phase")
        if phase in ("Running", "Succeeded", "Failed"):
            job.running.add(pod)
        if phase in ("Succeeded", "Failed"):
            job.finished.add(pod)
        key = (job.namespace, job.name)
        if job.phase == "Pending" and len(job.running) == job.replicas:
            job.phase = "Running"
            self.spawn(self.status(key, "Running"))
        if job.phase == "Running" and len(job.finished) == job.replicas:
            job.phase = "Succeeded"
            self.spawn(self.finish(key))

    async def finish(self, key: tuple[str, str]) -> None:
        await self.status(key, "Succeeded")
        await self.api.delete("Service", key[0], key[1], "")

    async def status(self, key: tuple[str, str], phase: str) -> None:
        now = format_time(datetime.now(UTC))
        condition = {"type": phase if phase != "Pending" else "Created", "status": "True", "reason": phase,
                     "message": f"the job is {phase.lower()}", "lastTransitionTime": now}  # fmt: skip
        body = {"status": {"phase": phase, "conditions": [condition]}}
        await self.api.request("PATCH", job_path(*key, "status"), body, "application/merge-patch+json")


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    credentials = await asyncio.to_thread(Credentials.load)
    async with Api(credentials) as api:
        raw = Raw(api)
        watches = [
            asyncio.create_task(watch(api, "/apis/mljob.io/v1alpha1/mljobs", raw.job_event, stop)),
            asyncio.create_task(watch(api, "/api/v1/pods", raw.pod_event, stop)),
        ]
        await stop.wait()
        for task in [*watches, *raw.tasks]:
            task.cancel()
        for task in watches:
            with contextlib.suppress(asyncio.CancelledError):
                await task


if __name__ == "__main__":
    asyncio.run(main())
