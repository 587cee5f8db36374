"""One run of a container's probes and lifecycle hooks, as the kubelet's probe workers and handler runner.

A :class:`ContainerRun` lives from the moment the container's process starts to the moment it ends (the worker
makes one per run, mljob.nodeagent.worker). It runs the postStart hook, then one task per probe that
feeds results to a :class:`~mljob.nodeagent.probes.ProbeState` on the probe's schedule and writes the verdicts
where the status is computed from (``ContainerRecord.startup_passed``/``readiness_passed``); a failed liveness
or startup verdict is handed to the worker's ``kill``. The preStop hook runs when the worker stops the container.
:meth:`close` ends every task it started (and with them any command they run in the container).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from mljob.nodeagent import handlers
from mljob.nodeagent.handlers import HandlerContext, Outcome
from mljob.nodeagent.podstatus import ContainerRecord
from mljob.nodeagent.probes import Probe, ProbeState, grace_after_pre_stop, hook, next_probe, probes_of

Event = Callable[[str, str, str], Awaitable[None]]
"""(type, reason, message): an Event on the pod."""


class ContainerRun:
    """The probes and hooks of one run of one container (see the module docstring)."""

    def __init__(
        self,
        record: ContainerRecord,
        container: Mapping[str, Any],
        ctx: HandlerContext,
        *,
        probed: bool,
        changed: Callable[[], None],
        event: Event,
        kill: Callable[[Probe], None],
        stopping: asyncio.Event,
        run_probe: Callable[[Probe, HandlerContext], Awaitable[Outcome]] = handlers.run_probe,
        run_hook: Callable[[Mapping[str, Any], HandlerContext], Awaitable[str | None]] = handlers.run_hook,
        probes: Sequence[Probe] | None = None,
    ) -> None:
        self.record = record
        self.container = container
        self.ctx = ctx
        self.probes = list(probes if probes is not None else probes_of(container)) if probed else []
        """Regular containers and sidecars are probed; the kubelet probes no other init container."""
        self._changed, self._event, self._kill, self._stopping = changed, event, kill, stopping
        self._run_probe, self._run_hook = run_probe, run_hook
        self._loop = asyncio.get_running_loop()
        self._began = self._loop.time()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._pre_stop: asyncio.Task[None] | None = None
        self._pre_stop_began = 0.0

    # --- hooks -----------------------------------------------------------------------------------------------

    async def post_start(self, exited: Callable[[], Awaitable[Any]]) -> bool:
        """Run the postStart hook; False (after a ``FailedPostStartHook`` event) when it failed, or when the
        container ended (``exited()`` returned) before it did."""
        handler = hook(self.container, "postStart")
        if handler is None:
            return True
        running = self._keep(self._run_hook(handler, self.ctx))
        ended = self._keep(exited())
        await asyncio.wait([running, ended], return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        if not running.done():
            error: str | None = "the container ended before the hook returned"
        elif running.exception() is not None:
            error = str(running.exception())
        else:
            error = running.result()
        running.cancel()
        if error is None:
            return True
        await self._event("Warning", "FailedPostStartHook", "PostStartHook failed")
        return False

    async def pre_stop(self, grace: float) -> float:
        """Run the preStop hook (once per run, whoever stops the container) for at most ``grace`` seconds; what
        is left of the grace for SIGTERM. No hook, or no grace (a forced stop): ``grace`` as it was."""
        handler = hook(self.container, "preStop")
        if handler is None or grace <= 0:
            return grace
        if self._pre_stop is None:
            self._pre_stop_began = self._loop.time()
            self._pre_stop = self._keep(self._pre_stop_hook(handler))
        left = grace - (self._loop.time() - self._pre_stop_began)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pre_stop), max(left, 0.0))
        return grace_after_pre_stop(grace, self._loop.time() - self._pre_stop_began)

    async def _pre_stop_hook(self, handler: Mapping[str, Any]) -> None:
        if await self._run_hook(handler, self.ctx) is not None:
            await self._event("Warning", "FailedPreStopHook", "PreStopHook failed")

    # --- probes ----------------------------------------------------------------------------------------------

    def start_probes(self) -> None:
        """Start probing: not started until a startup probe passes, not ready until a readiness probe does."""
        kinds = {p.kind for p in self.probes}
        self.record.startup_passed = False if "startup" in kinds else None
        self.record.readiness_passed = False if "readiness" in kinds else None
        if "startup" not in kinds:
            self._started.set()
        for probe in self.probes:
            self._keep(self._probe_loop(probe))

    async def _probe_loop(self, probe: Probe) -> None:
        state = ProbeState(probe)
        tick: float | None = None
        while not state.done:
            since = self._loop.time() - self._began
            tick = next_probe(probe, since if tick is None else max(since, tick + 1e-3))
            await asyncio.sleep(tick - since)
            if probe.kind != "startup" and not self._started.is_set():
                await self._started.wait()  # no other probe runs before the startup probe passed
                if probe.kind == "liveness":
                    continue  # at its next tick; readiness at once, as the kubelet triggers it on the status
            if probe.kind != "readiness" and self._stopping.is_set():
                return  # the pod is stopping: liveness and startup probes stop, readiness goes on
            outcome = await self._run_probe(probe, self.ctx)
            if outcome.result == "failure":
                await self._event("Warning", "Unhealthy", f"{probe.label} probe failed: {outcome.message}")
            elif outcome.result == "warning":
                await self._event("Warning", "ProbeWarning", f"{probe.label} probe warning: {outcome.message}")
            elif outcome.result == "error":
                message = f"{probe.label} probe errored and resulted in unknown state: {outcome.message}"
                await self._event("Warning", "Unhealthy", message)
                continue  # the kubelet throws an errored result away
            verdict = state.observe(outcome.result != "failure")
            if verdict is not None:
                self._apply(probe, verdict)

    def _apply(self, probe: Probe, verdict: bool) -> None:
        if probe.kind == "readiness":
            self.record.readiness_passed = verdict
            self._changed()
        elif probe.kind == "startup" and verdict:
            self.record.startup_passed = True
            self._started.set()
            self._changed()
        elif not verdict:  # liveness, or startup: the container is killed (and restarted by the policy)
            self._kill(probe)

    # --- the end ---------------------------------------------------------------------------------------------

    def _keep(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        return task

    async def close(self) -> None:
        """The container ended: stop every probe and hook of this run."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
