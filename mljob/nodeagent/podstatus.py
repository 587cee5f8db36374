"""A pod's status as a kubelet writes it, from what the agent observed of its containers: pure, no I/O.

The agent keeps one :class:`ContainerRecord` per container (its state now, the last termination, the restart
count) and a few pod-level facts (:class:`PodFacts`); :func:`pod_status` turns them into the ``status`` the
kubelet would write: phase, the four conditions, ``initContainerStatuses``/``containerStatuses``, the IPs. The
restart rules (:func:`restarts`, :func:`backoff_seconds`) and the record of a container whose process vanished
with the agent (:func:`lost`) live here too, so every decision is a function the unit tests call directly.

Phase, as the kubelet's ``getPhase``: Pending until the init containers are done and every container has started
once; Running while any container runs or waits to restart; Succeeded when every container (sidecars aside)
ended with 0 and none will restart; Failed when they all ended, one with another code, and none will restart, or
when an init container failed under ``restartPolicy: Never``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from mljob.api import format_time, parse_time
from mljob.nodeagent.cgroups import qos_class

Kind = Literal["init", "sidecar", "regular"]

LOST_REASON = "ContainerStatusUnknown"
LOST_MESSAGE = "The container could not be located when the pod was restarted: the node agent restarted"
"""What a kubelet reports for a container whose process vanished (after a node reboot); exit code 137."""


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str | None = None


@dataclass(frozen=True)
class Running:
    started_at: datetime


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    finished_at: datetime
    started_at: datetime | None = None
    message: str | None = None
    signal: int | None = None


State = Waiting | Running | Terminated


@dataclass
class ContainerRecord:
    """What the agent knows of one container; ``state`` changes, the rest follows the kubelet's counters."""

    name: str
    kind: Kind
    image: str = ""
    state: State = field(default_factory=lambda: Waiting("ContainerCreating"))
    last: Terminated | None = None
    restarts: int = 0
    started: bool = False
    """Whether it ever ran (a sidecar's ``started``; a never-started container keeps its pod Pending)."""
    container_id: str = ""
    startup_passed: bool | None = None
    """This run's startup probe verdict (mljob.nodeagent.prober): None without one (``started`` = running)."""
    readiness_passed: bool | None = None
    """This run's readiness probe verdict: None without one (``ready`` = started)."""

    @property
    def running(self) -> bool:
        return isinstance(self.state, Running)

    @property
    def started_now(self) -> bool:
        """The status's ``started``: running, and past its startup probe if it has one."""
        return self.running and self.startup_passed is not False

    @property
    def ready(self) -> bool:
        """The status's ``ready``: started, and passing its readiness probe if it has one (init containers never)."""
        return self.started_now and self.kind != "init" and self.readiness_passed is not False

    def restart_pending(self) -> None:
        """The container exited and will start again: its termination becomes ``lastState``."""
        if isinstance(self.state, Terminated):
            self.last = self.state
        self.restarts += 1


@dataclass(frozen=True)
class PodFacts:
    """Pod-level facts the agent knows besides its containers."""

    host_ip: str
    pod_ip: str | None = None
    start_time: datetime | None = None
    sandbox_ready: bool = False
    initialized: bool = False
    """Every init container done (sidecars started): the regular containers may start."""


def exit_reason(code: int, oom_killed: bool = False) -> str:
    """The kubelet's reason for a terminated container: Completed for 0, OOMKilled when the kernel killed it for
    memory (mljob.nodeagent.cgroups tells), Error otherwise."""
    if oom_killed:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


def exit_code_of(returncode: int) -> tuple[int, int | None]:
    """A process's exit as a container's: (exit code, signal); killed by signal N is 128 + N, as runtimes say."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def restarts(kind: Kind, policy: str, exit_code: int) -> bool:
    """Whether a container that exited with ``exit_code`` starts again under the pod's ``restartPolicy``.

    Sidecars (init containers with ``restartPolicy: Always``) always do; other init containers do unless they
    succeeded or the policy is Never; regular containers under Always always, under OnFailure on a failure.
    """
    if kind == "sidecar":
        return True
    if kind == "init":
        return exit_code != 0 and policy != "Never"
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff_seconds(restart: int, base: float, cap: float) -> float:
    """The wait before the ``restart``-th restart (1-based): ``base`` doubling up to ``cap`` (10 s..5 min)."""
    if restart <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(restart - 1, 32)))


def lost(record: ContainerRecord, now: datetime) -> Terminated:
    """The termination a kubelet reports for a container that was running when its processes vanished."""
    started = record.state.started_at if isinstance(record.state, Running) else None
    return Terminated(137, LOST_REASON, now, started, LOST_MESSAGE)


def _state(state: State | None) -> dict[str, Any]:
    if state is None:
        return {}
    if isinstance(state, Waiting):
        return {"waiting": {"reason": state.reason, **({"message": state.message} if state.message else {})}}
    if isinstance(state, Running):
        return {"running": {"startedAt": format_time(state.started_at)}}
    out: dict[str, Any] = {"exitCode": state.exit_code, "reason": state.reason}
    if state.signal is not None:
        out["signal"] = state.signal
    if state.message:
        out["message"] = state.message
    out["startedAt"] = format_time(state.started_at) if state.started_at else None
    out["finishedAt"] = format_time(state.finished_at)
    if state.started_at is None:
        del out["startedAt"]
    return {"terminated": out}


def container_status(record: ContainerRecord) -> dict[str, Any]:
    """One entry of ``containerStatuses``/``initContainerStatuses``; ``ready`` and ``started`` follow the probes."""
    ready = record.ready
    status: dict[str, Any] = {
        "name": record.name,
        "state": _state(record.state),
        "lastState": _state(record.last),
        "ready": ready,
        "restartCount": record.restarts,
        "image": record.image,
        "imageID": "",
        "started": record.started_now,
    }
    if record.container_id:
        status["containerID"] = record.container_id
    return status


def phase(records: Sequence[ContainerRecord], facts: PodFacts, policy: str) -> str:
    """The pod's phase, by the kubelet's rules (see the module docstring)."""
    inits = [r for r in records if r.kind == "init"]
    for r in inits:
        if isinstance(r.state, Terminated) and r.state.exit_code != 0 and policy == "Never":
            return "Failed"
    if not facts.initialized:
        return "Pending"
    regular = [r for r in records if r.kind == "regular"]
    if any(not r.started and not isinstance(r.state, Terminated) for r in regular):
        return "Pending"
    if any(not isinstance(r.state, Terminated) for r in regular):
        return "Running"
    if any(isinstance(r.state, Terminated) and r.state.exit_code != 0 for r in regular):
        return "Failed"
    return "Succeeded"


def _condition(
    kind: str,
    ok: bool,
    reason: str = "",
    message: str = "",
    *,
    now: datetime,
    previous: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or format_time(now),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def conditions(
    records: Sequence[ContainerRecord],
    facts: PodFacts,
    pod_phase: str,
    previous: Sequence[Mapping[str, Any]],
    now: datetime,
) -> list[dict[str, Any]]:
    """PodReadyToStartContainers, Initialized, Ready, ContainersReady, and PodScheduled (the scheduler's, kept).

    A condition's ``lastTransitionTime`` moves only when its status flips, as the kubelet keeps it.
    """
    before = {str(c.get("type")): c for c in previous}
    terminal = pod_phase in ("Succeeded", "Failed")
    out = [_condition("PodReadyToStartContainers", facts.sandbox_ready and not terminal, now=now, previous=before)]
    pending_inits = [r.name for r in records if r.kind in ("init", "sidecar") and not _init_done(r)]
    if facts.initialized:
        out.append(_condition("Initialized", True, "PodCompleted" if terminal else "", now=now, previous=before))
    else:
        message = f"containers with incomplete status: [{' '.join(pending_inits)}]"
        out.append(_condition("Initialized", False, "ContainersNotInitialized", message, now=now, previous=before))
    unready = [r.name for r in records if r.kind != "init" and not r.ready]
    if terminal:
        ready_parts: tuple[bool, str, str] = (False, "PodCompleted", "")
    elif unready:
        ready_parts = (False, "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        ready_parts = (True, "", "")
    out.append(_condition("Ready", *ready_parts, now=now, previous=before))
    out.append(_condition("ContainersReady", *ready_parts, now=now, previous=before))
    # The scheduler's, kept; a pod bound by its nodeName never met a scheduler: the kubelet adds it as True.
    out.append(dict(before.get("PodScheduled") or _condition("PodScheduled", True, now=now, previous=before)))
    return out


def _init_done(record: ContainerRecord) -> bool:
    if record.kind == "sidecar":
        return record.started
    return isinstance(record.state, Terminated) and record.state.exit_code == 0


def pod_status(
    pod: Mapping[str, Any], records: Sequence[ContainerRecord], facts: PodFacts, now: datetime
) -> dict[str, Any]:
    """The ``status`` to write for ``pod``: phase, conditions, container statuses in spec order, IPs, start time."""
    spec = pod.get("spec") or {}
    previous = (pod.get("status") or {}).get("conditions") or []
    policy = str(spec.get("restartPolicy") or "Always")
    pod_phase = phase(records, facts, policy)
    status: dict[str, Any] = {
        "phase": pod_phase,
        "conditions": conditions(records, facts, pod_phase, previous, now),
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "podIP": facts.pod_ip,
        "podIPs": [{"ip": facts.pod_ip}] if facts.pod_ip else None,
        "startTime": format_time(facts.start_time) if facts.start_time else None,
        "initContainerStatuses": [container_status(r) for r in records if r.kind != "regular"] or None,
        "containerStatuses": [container_status(r) for r in records if r.kind == "regular"],
        # The API server's, kept (a merge patch would keep it anyway); computed the same way where it is missing.
        "qosClass": (pod.get("status") or {}).get("qosClass") or qos_class(pod),
    }
    return status


def records_for(pod: Mapping[str, Any]) -> list[ContainerRecord]:
    """Fresh records for every container of ``pod``, init containers first, in spec order."""
    spec = pod.get("spec") or {}
    out = []
    for c in spec.get("initContainers") or ():
        kind: Kind = "sidecar" if c.get("restartPolicy") == "Always" else "init"
        out.append(ContainerRecord(str(c["name"]), kind, str(c.get("image") or "")))
    for c in spec.get("containers") or ():
        out.append(ContainerRecord(str(c["name"]), "regular", str(c.get("image") or ""), Waiting("PodInitializing")))
    if not out or out[0].kind != "regular":  # with no init containers, regular ones are being created
        return out
    return [replace(r, state=Waiting("ContainerCreating")) for r in out]


def _parse_state(raw: Mapping[str, Any] | None) -> State | None:
    raw = raw or {}
    if "running" in raw:
        return Running(parse_time(raw["running"].get("startedAt")) or _EPOCH)
    if "terminated" in raw:
        t = raw["terminated"]
        return Terminated(
            int(t.get("exitCode") or 0),
            str(t.get("reason") or ""),
            parse_time(t.get("finishedAt")) or _EPOCH,
            parse_time(t.get("startedAt")),
            t.get("message"),
            t.get("signal"),
        )
    if "waiting" in raw:
        w = raw["waiting"]
        return Waiting(str(w.get("reason") or ""), w.get("message"))
    return None


_EPOCH = datetime.fromtimestamp(0, UTC)


def recovered(pod: Mapping[str, Any], now: datetime) -> list[ContainerRecord]:
    """The records of a pod the agent finds after its own restart, its processes gone.

    Counters and terminations come from the pod's status; a container that was running (or had started and
    waited to restart) has vanished: it is terminated with the kubelet's ``ContainerStatusUnknown`` (137), and the
    worker restarts it, or not, by the pod's ``restartPolicy``, as a kubelet does after a node reboot.
    """
    records = records_for(pod)
    status = pod.get("status") or {}
    seen = {
        str(s.get("name")): s
        for s in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]
    }
    for record in records:
        raw = seen.get(record.name)
        if raw is None:
            continue
        record.restarts = int(raw.get("restartCount") or 0)
        record.container_id = str(raw.get("containerID") or "")
        last = _parse_state(raw.get("lastState"))
        record.last = last if isinstance(last, Terminated) else None
        state = _parse_state(raw.get("state"))
        if isinstance(state, Running):
            record.started = True
            record.state = lost(replace(record, state=state), now)
        elif isinstance(state, Terminated):
            record.started = True
            record.state = state
        elif isinstance(state, Waiting) and record.last is not None:
            record.started = True  # waiting to restart: it ran before
    return records
