"""One pod's life on the node, as the kubelet's pod worker: sandbox, init containers, containers, restarts, deletion.

Order, as the kubelet's: the sandbox (the pod's IP and namespaces, from the :class:`PodNetwork`); the init
containers one at a time, each run to success (restarted under OnFailure/Always, the pod Failed under Never),
native sidecars (init containers with ``restartPolicy: Always``) started in their place and kept running; then
every container at once, each restarted by the pod's ``restartPolicy`` with CrashLoopBackOff's doubling wait. When
no container will run again the sidecars are stopped and the pod is Succeeded or Failed. On deletion every
process gets SIGTERM, SIGKILL after the grace period, and the pod is deleted for good (grace 0, uid precondition).

The worker only records what happened (:class:`~mljob.nodeagent.podstatus.ContainerRecord`); the status written
is :func:`~mljob.nodeagent.podstatus.pod_status` of those records, sent by one writer task when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mljob.nodeagent import apidata, atomicwriter, cgroups, podspec
from mljob.nodeagent.apidata import SourceError, Sources, TokenKey
from mljob.nodeagent.handlers import ExecTarget, HandlerContext, sockets_for
from mljob.nodeagent.logs import log_file, termination_message
from mljob.nodeagent.podstatus import (
    ContainerRecord,
    PodFacts,
    Running,
    Terminated,
    Waiting,
    backoff_seconds,
    exit_code_of,
    exit_reason,
    pod_status,
    records_for,
    recovered,
    restarts,
)
from mljob.nodeagent.prober import ContainerRun
from mljob.nodeagent.probes import Probe, kill_grace, kill_message
from mljob.nodeagent.runtime import ContainerProcess
from mljob.nodeagent.sandbox import PodIdentity, PodNetwork, Sandbox

log = logging.getLogger("mljob.nodeagent")
DEFAULT_GRACE = 30.0


@dataclass(frozen=True)
class Settings:
    """What every pod worker shares: where to keep files, how to wrap processes, the restart back-off."""

    state_dir: Path
    isolation: tuple[str, ...]
    base_env: Mapping[str, str]
    host_ip: str
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    image_roots: tuple[str, ...] = ()
    """The agent's Python environment and its interpreter's installation: what stands in for an image's software
    (podspec.image_binds)."""
    sync_seconds: float = 60.0
    """How often API volumes (ConfigMaps, Secrets, tokens, the downward API) are brought up to date, and how soon
    a volume or env that could not be set up is tried again (the kubelet's --sync-frequency)."""
    allocatable: Mapping[str, str] = field(default_factory=dict)
    """The Node's allocatable: what a resource field of the downward API reads when a limit is unset."""
    hierarchy: cgroups.Hierarchy | None = None
    """Where the pods' cgroups go (mljob.nodeagent.cgroups); None: they run unlimited, for ``no_cgroups``."""
    no_cgroups: str = ""


class Calls:
    """The worker's writes to the API server (the agent's client), as callables so a test can stand in for them."""

    def __init__(
        self,
        patch_status: Callable[[Mapping[str, Any], dict[str, Any]], Awaitable[None]],
        delete: Callable[[Mapping[str, Any]], Awaitable[None]],
        event: Callable[[Mapping[str, Any], str, str, str], Awaitable[None]],
        read: Callable[[str, str, str], Awaitable[dict[str, Any] | None]] | None = None,
        token: Callable[[Mapping[str, Any], TokenKey], Awaitable[tuple[str, datetime]]] | None = None,
        services: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
    ) -> None:
        self.patch_status, self.delete, self.event = patch_status, delete, event
        self.read = read or _nothing
        """``read(resource, namespace, name)``: a ConfigMap or Secret (``configmaps``/``secrets``), None if absent."""
        self.token = token or _no_token
        """A TokenRequest for the pod's ServiceAccount, bound to the pod: the token and when it expires."""
        self.services = services or _no_services
        """The namespace's Services and ``default/kubernetes``, for the Services' env."""


async def _nothing(resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    return None


async def _no_token(pod: Mapping[str, Any], key: TokenKey) -> tuple[str, datetime]:
    raise SourceError("this agent has no API client for tokens")


async def _no_services(namespace: str) -> list[dict[str, Any]]:
    return []


def pod_dir(state_dir: Path, pod: Mapping[str, Any]) -> Path:
    """The pod's folder, as the kubelet names /var/log/pods entries: ``<namespace>_<name>_<uid>``."""
    meta = pod["metadata"]
    return state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def identity(pod: Mapping[str, Any]) -> PodIdentity:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    return PodIdentity(
        uid=str(meta["uid"]),
        name=str(meta["name"]),
        namespace=str(meta["namespace"]),
        hostname=str(spec.get("hostname") or meta["name"]),
        subdomain=spec.get("subdomain"),
        host_network=bool(spec.get("hostNetwork")),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class PodWorker:
    """Runs one pod; :meth:`update` feeds it the pod's latest version, :meth:`gone` its deletion from the API."""

    def __init__(
        self, pod: Mapping[str, Any], node: str, network: PodNetwork, settings: Settings, calls: Calls
    ) -> None:
        self.pod: Mapping[str, Any] = pod
        self.node = node
        self.network = network
        self.settings = settings
        self.calls = calls
        self.uid = str(pod["metadata"]["uid"])
        self.dir = pod_dir(settings.state_dir, pod)
        self.logs_dir = self.dir / "logs"
        self.records: list[ContainerRecord] = []
        self.facts = PodFacts(host_ip=settings.host_ip)
        self.processes: dict[str, ContainerProcess] = {}
        self.live_logs: set[Path] = set()
        self.sandbox: Sandbox | None = None
        self._stopping = asyncio.Event()
        self._dirty = asyncio.Event()
        self._written: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._stop_grace = 0.0
        self._tokens: dict[TokenKey, tuple[str, datetime]] = {}
        """Each token the pod's volumes hold, and when to request it again."""
        self.runs: dict[str, ContainerRun] = {}
        """The running containers' probes and hooks (mljob.nodeagent.prober), by container name."""
        self._probe_kills: dict[str, asyncio.Task[None]] = {}
        self._starting = asyncio.Lock()
        """Held from a container's start to its postStart's end: the kubelet starts a pod's containers one by
        one, in spec order, each after the previous one's postStart hook returned."""
        self._main: asyncio.Task[None] | None = None
        self._deleting: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        """Set when the worker has nothing left to do (the pod is deleted, or finished and cleaned up)."""

    @property
    def name(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    # --- feeding ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"pod {self.name}")
        self._tasks.append(asyncio.create_task(self._write_status(), name=f"status {self.name}"))
        self.update(self.pod)

    def update(self, pod: Mapping[str, Any]) -> None:
        """The pod's newest version from the watch: a deletion timestamp starts the graceful stop."""
        self.pod = pod
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") and self._deleting is None:
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE)
            self._deleting = asyncio.create_task(self._delete(float(grace)), name=f"delete {self.name}")

    async def gone(self) -> None:
        """The pod is no longer in the API (deleted by someone else, grace 0): stop at once and clean up."""
        self._stopping.set()
        await self._stop_all(0.0)
        await self._cleanup()

    async def shutdown(self, grace: float) -> None:
        """The agent is stopping: end the processes (they would die with it anyway) and leave the status."""
        self._stopping.set()
        await self._stop_all(grace)
        for task in [self._main, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._main, *self._tasks] if t is not None), return_exceptions=True)

    # --- the pod's life --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        if _terminal(self.pod):
            return  # finished before we saw it (or before the agent restarted): nothing runs again
        status = self.pod.get("status") or {}
        if status.get("containerStatuses") or status.get("initContainerStatuses"):
            self.records = recovered(self.pod, _now())
            initialized = any(
                c.get("type") == "Initialized" and c.get("status") == "True" for c in status.get("conditions") or ()
            )
        else:
            self.records, initialized = records_for(self.pod), False
        start = _parse(status.get("startTime")) or _now()
        self.facts = replace(self.facts, start_time=start, initialized=initialized)
        self._changed()
        try:
            self.sandbox = await asyncio.to_thread(self.network.create, identity(self.pod))
        except Exception as error:  # the network side's failure: the kubelet's FailedCreatePodSandBox
            log.exception("sandbox of %s", self.name)
            await self._event("Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {error}")
            return
        self.facts = replace(self.facts, pod_ip=self.sandbox.ip, sandbox_ready=True)
        for problem in podspec.unsupported(self.pod):
            await self._event("Warning", "Unsupported", problem)
        unlimited = cgroups.unsupported_note(self.settings.hierarchy, self.settings.no_cgroups, self.pod)
        if unlimited:
            await self._event("Warning", "Unsupported", unlimited)
        self._changed()
        if not await self._mount_api_volumes():
            return  # stopping before its volumes could be set up
        self._tasks.append(asyncio.create_task(self._resync_api_volumes(), name=f"volumes {self.name}"))
        policy = str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")
        specs = {str(c["name"]): c for c in podspec.containers(self.pod)}
        sidecars: list[asyncio.Task[None]] = []
        if not self.facts.initialized:
            for record in self.records:
                if record.kind == "sidecar":
                    sidecars.append(asyncio.create_task(self._supervise(record, specs[record.name], policy)))
                    await self._until_started(record)
                elif record.kind == "init":
                    if isinstance(record.state, Terminated) and record.state.exit_code == 0:
                        continue
                    await self._supervise(record, specs[record.name], policy)
                    if not (isinstance(record.state, Terminated) and record.state.exit_code == 0):
                        await self._finish(sidecars)  # failed for good under Never, or stopping
                        return
                if self._stopping.is_set():
                    return
            self.facts = replace(self.facts, initialized=True)
            self._changed()
        else:  # recovered after an agent restart: sidecars start again, finished init containers do not
            for record in self.records:
                if record.kind == "sidecar":
                    sidecars.append(asyncio.create_task(self._supervise(record, specs[record.name], policy)))
        regular = [
            asyncio.create_task(self._supervise(r, specs[r.name], policy))
            for r in self.records
            if r.kind == "regular" and not self._done_for_good(r, policy)
        ]
        await asyncio.gather(*regular)
        await self._finish(sidecars)

    def _done_for_good(self, record: ContainerRecord, policy: str) -> bool:
        state = record.state
        return isinstance(state, Terminated) and not restarts(record.kind, policy, state.exit_code)

    async def _finish(self, sidecars: list[asyncio.Task[None]]) -> None:
        """No container will run again: stop the sidecars (their exits do not count) and write the last status."""
        self._stopping.set()
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE))
        await self._stop_all(grace)
        await asyncio.gather(*sidecars, return_exceptions=True)
        self._changed()
        await self._remove_sandbox()  # as the kubelet tears down a finished pod's sandbox: its IP is free again

    async def _remove_sandbox(self) -> None:
        try:
            await asyncio.to_thread(self.network.remove, identity(self.pod))
        except Exception:
            log.exception("removing the sandbox of %s", self.name)
        if self.settings.hierarchy is not None:  # its processes are gone: its cgroups go with the sandbox
            try:
                if not await asyncio.to_thread(cgroups.remove_pod, self.settings.hierarchy, self.node, self.uid):
                    log.warning("the cgroups of %s are still there (busy)", self.name)
            except OSError:
                log.exception("removing the cgroups of %s", self.name)

    async def _until_started(self, record: ContainerRecord) -> None:
        while not (record.started and record.startup_passed is not False) and not self._stopping.is_set():
            await self._wait_change()

    async def _wait_change(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _changed(self) -> None:
        self._dirty.set()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = []

    async def _supervise(self, record: ContainerRecord, spec: Mapping[str, Any], policy: str) -> None:
        """Run one container until it will not run again (by the restart rules), or until the pod stops."""
        step = 0
        back_off = True
        if isinstance(record.state, Terminated):  # recovered after an agent restart: its process is gone
            if not restarts(record.kind, policy, record.state.exit_code):
                return
            record.restart_pending()
            record.state = Waiting("ContainerCreating")
            back_off = False  # the back-off lived in the old agent's memory, as a kubelet's does: start over
        while not self._stopping.is_set():
            if back_off and record.last is not None and isinstance(record.state, Waiting):
                step += 1
                delay = backoff_seconds(step, self.settings.backoff_base, self.settings.backoff_max)
                meta = self.pod["metadata"]
                record.state = Waiting(
                    "CrashLoopBackOff",
                    f"back-off {delay:g}s restarting failed container={record.name} "
                    f"pod={meta['name']}_{meta['namespace']}({self.uid})",
                )
                self._changed()
                await self._event("Warning", "BackOff", f"Back-off restarting failed container {record.name}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
            back_off = True
            ended = await self._run_once(record, spec)
            if ended is None:  # a config error: waiting with its reason, tried again at each sync, as the kubelet
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.sync_seconds)
                back_off = False
                continue
            if (
                ended.started_at
                and (ended.finished_at - ended.started_at).total_seconds() > 2 * self.settings.backoff_max
            ):
                step = 0  # ran long enough: the back-off starts over, as the kubelet's does after 10 minutes
            forced = self._probe_kills.pop(record.name, None) is not None and policy != "Never"  # the kubelet's
            if self._stopping.is_set() or not (forced or restarts(record.kind, policy, ended.exit_code)):
                return
            record.restart_pending()
            record.state = Waiting("CrashLoopBackOff")
            self._changed()

    async def _run_once(self, record: ContainerRecord, spec: Mapping[str, Any]) -> Terminated | None:
        """One run of the container: its termination, or None when it cannot be started as configured."""
        assert self.sandbox is not None
        try:
            sources = await self._fetch(apidata.references(self.pod)[1], services=True)
        except Exception as error:  # the API server did not answer: as a config error, tried again at the next sync
            sources = None
            fetch_error = f"reading the container's env sources: {error}"
        ctx = podspec.PodContext(
            pod_ip=self.sandbox.ip,
            host_ip=self.settings.host_ip,
            node_name=self.node,
            volumes_dir=str(self.dir / "volumes"),
            base_env=self.settings.base_env,
            sources=sources or Sources(),
            image_roots=self.settings.image_roots,
        )
        try:
            if sources is None:
                raise podspec.ConfigError(fetch_error)
            launch = podspec.launch(self.pod, spec, ctx)
        except podspec.NoCommand as error:
            record.state = Terminated(128, "StartError", _now(), None, str(error))
            record.started = True
            self._changed()
            await self._event("Warning", "Failed", f"Error: {error}")
            return record.state
        except podspec.ConfigError as error:
            record.state = Waiting("CreateContainerConfigError", str(error))
            self._changed()
            await self._event("Warning", "Failed", f"Error: {error}")
            return None
        if self._stopping.is_set():
            return None
        for volume in self._empty_dirs():
            volume.mkdir(parents=True, exist_ok=True)
        path = log_file(self.logs_dir, record.name, record.restarts)
        await self._starting.acquire()  # released when its postStart hook returned
        try:  # the cgroups first: the process joins them before its command runs (runtime.MOUNT_SHIM)
            cgroup = await asyncio.to_thread(cgroups.prepare, self.settings.hierarchy, self.node, self.pod, spec)
            process = await ContainerProcess.start(
                launch, self.sandbox.prefix, self.settings.isolation, path, cgroup.joins
            )
        except OSError as error:
            self._starting.release()
            record.state = Terminated(128, "StartError", _now(), None, str(error))
            self._changed()
            return record.state
        started = _now()
        self.processes[record.name] = process
        run = self._container_run(record, spec, launch, process)
        if self._stopping.is_set():  # the pod began to stop while this one started: it joins the others
            await process.stop(self._stop_grace)
        self.live_logs.add(path)
        record.container_id = f"mljob://{self.uid[:8]}-{record.name}-{record.restarts}"
        await self._event("Normal", "Started", f"Started container {record.name}")
        # As the kubelet: the container is running, but its start (and the next container's) waits for postStart.
        hooked = self._stopping.is_set() or await run.post_start(process.proc.wait)
        self._starting.release()
        record.started = True
        if hooked:
            record.state = Running(started)
            run.start_probes()
        self._changed()
        if not hooked and not self._stopping.is_set():  # killed as the kubelet does; restarted by the policy
            await self._event("Normal", "Killing", "FailedPostStartHook")
            await self._kill(record.name, process, kill_grace(self.pod))
        try:
            exit = await process.wait()
        finally:
            self.live_logs.discard(path)
            self.processes.pop(record.name, None)
            await run.close()
            self.runs.pop(record.name, None)
            if record.name in self._probe_kills:  # done by now: its process is gone
                await asyncio.gather(self._probe_kills[record.name], return_exceptions=True)
        code, signal = exit_code_of(exit.returncode)
        message = None
        if code != 0 and spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = termination_message(path) or None
        reason = exit_reason(code, cgroup.oom_killed(code))
        record.state = Terminated(code, reason, _now(), started, message, signal)
        self._changed()
        return record.state

    def _container_run(
        self,
        record: ContainerRecord,
        spec: Mapping[str, Any],
        launch: podspec.ContainerLaunch,
        process: ContainerProcess,
    ) -> ContainerRun:
        """This run's probes and hooks: commands enter the container through its process, connections are made
        where the pod's IP is reachable (handlers.sockets_for)."""
        assert self.sandbox is not None
        rootless = "--user" in self.settings.isolation
        target = ExecTarget(process.pid, launch.env, launch.working_dir, launch.mounts, rootless)
        run = ContainerRun(
            record,
            spec,
            HandlerContext(spec, self.sandbox.ip, sockets_for(self.network), target),
            probed=record.kind != "init",
            changed=self._changed,
            event=self._event,
            kill=lambda probe: self._probe_kill(record, probe),
            stopping=self._stopping,
        )
        self.runs[record.name] = run
        return run

    def _probe_kill(self, record: ContainerRecord, probe: Probe) -> None:
        """A liveness or startup probe failed: kill the container as the kubelet does (preStop, SIGTERM, the
        probe's grace); it starts again unless the policy is Never, whatever its exit code."""
        process = self.processes.get(record.name)
        if process is None or self._stopping.is_set() or record.name in self._probe_kills:
            return
        policy = str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")

        async def kill() -> None:
            await self._event("Normal", "Killing", kill_message(record.name, probe, policy))
            await self._kill(record.name, process, kill_grace(self.pod, probe))

        self._probe_kills[record.name] = asyncio.create_task(kill(), name=f"kill {self.name}/{record.name}")

    async def _kill(self, name: str, process: ContainerProcess, grace: float) -> None:
        """Stop one container as the kubelet's killContainer: its preStop hook first, counted in the grace."""
        run = self.runs.get(name)
        if run is not None:
            grace = await run.pre_stop(grace)
        await process.stop(grace)

    # --- API volumes: ConfigMaps, Secrets, tokens, the downward API -------------------------------------------

    async def _fetch(self, refs: apidata.References, *, services: bool) -> Sources:
        """The objects ``refs`` names, as they are now (tokens from the cache while fresh)."""
        namespace = str(self.pod["metadata"]["namespace"])
        maps = {name: await self.calls.read("configmaps", namespace, name) for name in sorted(refs.config_maps)}
        secrets = {name: await self.calls.read("secrets", namespace, name) for name in sorted(refs.secrets)}
        tokens = {key: await self._token(key) for key in sorted(refs.tokens, key=str)}
        found = await self.calls.services(namespace) if services else []
        return Sources(maps, secrets, tokens, found, self.settings.allocatable)

    async def _token(self, key: TokenKey) -> str:
        """A token bound to this pod, requested again once 80% of its life is over, as the kubelet's manager."""
        cached = self._tokens.get(key)
        now = _now()
        if cached is not None and now < cached[1]:
            return cached[0]
        token, expires = await self.calls.token(self.pod, key)
        self._tokens[key] = (token, now + (expires - now) * 0.8)
        return token

    async def _write_api_volumes(self) -> str | None:
        """Bring every API volume's files up to date; the first problem as the kubelet's FailedMount says it."""
        refs = apidata.references(self.pod)[0]
        try:
            sources = await self._fetch(refs, services=False)
        except Exception as error:
            return f"MountVolume.SetUp failed: {error}"
        for volume in (self.pod.get("spec") or {}).get("volumes") or ():
            if not apidata.api_volume(volume):
                continue
            name = str(volume.get("name"))
            try:
                files = apidata.volume_files(self.pod, volume, sources)
            except SourceError as error:
                return f'MountVolume.SetUp failed for volume "{name}" : {error}'
            await asyncio.to_thread(atomicwriter.write, self.dir / "volumes" / name, files)
        return None

    async def _mount_api_volumes(self) -> bool:
        """Before any container: every API volume written, tried again each sync until it can be (False: stopping).

        Meanwhile the containers wait in ContainerCreating and a Warning ``FailedMount`` says why, as the kubelet's.
        """
        said = None
        while not self._stopping.is_set():
            problem = await self._write_api_volumes()
            if problem is None:
                return True
            if problem != said:
                await self._event("Warning", "FailedMount", problem)
                said = problem
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.sync_seconds)
        return False

    async def _resync_api_volumes(self) -> None:
        """While the pod runs: ConfigMap, Secret and label changes reach the files, tokens are renewed."""
        if not any(apidata.api_volume(v) for v in (self.pod.get("spec") or {}).get("volumes") or ()):
            return
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.sync_seconds)
            if self._stopping.is_set():
                return
            problem = await self._write_api_volumes()
            if problem is not None:  # the files keep their last content, as the kubelet's do
                log.warning("%s: %s", self.name, problem)

    def _empty_dirs(self) -> list[Path]:
        volumes = (self.pod.get("spec") or {}).get("volumes") or ()
        return [self.dir / "volumes" / str(v["name"]) for v in volumes if "emptyDir" in v]

    async def _stop_all(self, grace: float) -> None:
        """Regular containers first, then sidecars (in reverse), each its preStop hook, SIGTERM, then SIGKILL, all
        within ``grace``."""
        self._stop_grace = grace
        self._stopping.set()
        self._changed()
        order = {r.name: i for i, r in enumerate(self.records)}
        regular = [(n, p) for n, p in self.processes.items() if self._kind(n) == "regular"]
        if regular:
            await asyncio.gather(*(self._kill(n, p, grace) for n, p in regular))
        rest = sorted((n for n in self.processes if self._kind(n) != "regular"), key=lambda n: -order.get(n, 0))
        for name in rest:
            process = self.processes.get(name)
            if process is not None:
                await self._kill(name, process, grace)

    def _kind(self, name: str) -> str:
        return next((r.kind for r in self.records if r.name == name), "regular")

    async def _delete(self, grace: float) -> None:
        """The graceful deletion: stop every process, write the last status, delete the pod with grace 0."""
        running = bool(self.processes)
        if running:
            await self._event("Normal", "Killing", "Stopping container(s)")
        await self._stop_all(grace)
        if self._main is not None:
            await asyncio.gather(self._main, return_exceptions=True)
        if running:
            await self._flush()
        try:
            await self.calls.delete(self.pod)
        except Exception as error:  # the writer retries nothing here: the next watch event starts over
            log.warning("deleting %s: %s", self.name, error)
        await self._cleanup()

    async def _cleanup(self) -> None:
        await self._remove_sandbox()  # idempotent; also after an agent restart, when it may be left from before
        for task in self._tasks:
            task.cancel()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.done.set()

    # --- status ----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        previous = self._written.get("conditions") if self._written else None
        pod = self.pod
        if previous:
            scheduled = [
                c for c in (pod.get("status") or {}).get("conditions") or () if c.get("type") == "PodScheduled"
            ]
            kept = {"qosClass": (pod.get("status") or {}).get("qosClass")}  # the API server's
            pod = {**pod, "status": {"conditions": [*previous, *scheduled], **kept}}
        return pod_status(pod, self.records, self.facts, _now())

    async def _write_status(self) -> None:
        """One writer: whenever the records change, write the status if it differs from the last one written."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.records:
                continue
            await self._flush()

    async def _flush(self) -> None:
        status = self.status()
        if status == self._written:
            return
        for attempt in range(5):
            try:
                await self.calls.patch_status(self.pod, status)
                self._written = status
                return
            except Exception as error:
                log.warning("status of %s: %s", self.name, error)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    async def _event(self, kind: str, reason: str, message: str) -> None:
        try:
            await self.calls.event(self.pod, kind, reason, message)
        except Exception as error:
            log.warning("event for %s: %s", self.name, error)


def _parse(value: Any) -> datetime | None:
    from mljob.api import parse_time

    return parse_time(value) if isinstance(value, str) else None
