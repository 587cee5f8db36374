"""Probes and lifecycle hooks as the kubelet reads them: timings, thresholds, requests; pure, no I/O.

What the kubelet's prober worker decides (pkg/kubelet/prober/worker.go) is here as data and small functions, so
the unit tests feed them results and times without a process: :class:`Probe` is one probe of a container with the
API's defaults applied; :class:`ProbeState` turns a run of probe results into the verdict the kubelet stores
(``successThreshold`` successes in a row, ``failureThreshold`` failures in a row); :func:`next_probe` says when
the next probe is due. The probing itself (exec in the container, HTTP, TCP) is mljob.nodeagent.handlers; the
loops that connect the two to a running container are mljob.nodeagent.prober.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mljob.local.launch import expand

ProbeKind = Literal["startup", "readiness", "liveness"]
KINDS: tuple[ProbeKind, ...] = ("startup", "readiness", "liveness")
FIELDS: dict[ProbeKind, str] = {"startup": "startupProbe", "readiness": "readinessProbe", "liveness": "livenessProbe"}
ACTIONS = ("exec", "httpGet", "tcpSocket", "grpc")
HOOK_ACTIONS = ("exec", "httpGet", "tcpSocket", "sleep")
DEFAULT_GRACE = 30.0
MIN_GRACE_AFTER_PRE_STOP = 2.0
"""The kubelet's ``minimumGracePeriodInSeconds``: a container whose preStop used up its grace still gets this."""
KUBE_VERSION = "1.37"
MAX_OUTPUT = 10 * 1024
"""What the kubelet keeps of an exec probe's output or an HTTP probe's body (10 KiB)."""


class ProbeError(Exception):
    """A probe that cannot be run as written (a named port the container lacks): it counts for nothing."""


@dataclass(frozen=True)
class Probe:
    """One probe of a container, the API's defaults applied (periodSeconds 10, timeoutSeconds 1, thresholds 1/3)."""

    kind: ProbeKind
    action: str
    """``exec``, ``httpGet``, ``tcpSocket`` or ``grpc``: the key of :attr:`handler` that says what to run."""
    handler: Mapping[str, Any]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: float | None = None
    """The probe's ``terminationGracePeriodSeconds``: the grace of a kill this probe causes, when set."""

    @property
    def label(self) -> str:
        """How the kubelet names it in events: ``Liveness probe failed: ...``."""
        return self.kind.capitalize()

    @classmethod
    def parse(cls, kind: ProbeKind, raw: Mapping[str, Any]) -> Probe:
        action = next((a for a in ACTIONS if raw.get(a) is not None), "")

        def number(key: str, default: float, floor: float) -> float:
            value = raw.get(key)
            return max(float(value), floor) if value is not None else default

        grace = raw.get("terminationGracePeriodSeconds")
        return cls(
            kind=kind,
            action=action,
            handler=raw.get(action) or {},
            initial_delay=number("initialDelaySeconds", 0.0, 0.0),
            period=number("periodSeconds", 10.0, 1.0),
            timeout=number("timeoutSeconds", 1.0, 1.0),
            success_threshold=int(number("successThreshold", 1, 1)),
            failure_threshold=int(number("failureThreshold", 3, 1)),
            termination_grace=float(grace) if grace is not None else None,
        )


def probes_of(container: Mapping[str, Any]) -> list[Probe]:
    """The container's probes that the agent runs (startup first; gRPC ones are not run: see :func:`unsupported`)."""
    out = []
    for kind in KINDS:
        raw = container.get(FIELDS[kind])
        if raw:
            probe = Probe.parse(kind, raw)
            if probe.action in ("exec", "httpGet", "tcpSocket"):
                out.append(probe)
    return out


def unsupported(container: Mapping[str, Any]) -> list[str]:
    """What of the container's probes and hooks the agent does not run, each said once as an ``Unsupported`` event."""
    out = []
    for kind in KINDS:
        raw = container.get(FIELDS[kind]) or {}
        if raw.get("grpc") is not None:
            out.append(
                f"container {container.get('name')!r}: {FIELDS[kind]}.grpc is not run by the node agent "
                "(the probe counts as passing)"
            )
    return out


class ProbeState:
    """The verdict of one probe over one run of its container, as the kubelet's worker keeps it.

    Starts at the kubelet's initial value (readiness: failing, liveness: passing, startup: unknown); a result
    moves it only after ``successThreshold`` successes or ``failureThreshold`` failures in a row. A liveness
    failure or any startup verdict puts the probe on hold for the rest of the run (the kubelet probes again only
    in a new container): :attr:`done`.
    """

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.verdict: bool | None = {"readiness": False, "liveness": True, "startup": None}[probe.kind]
        self._last: bool | None = None
        self._run = 0
        self.done = False

    def observe(self, success: bool) -> bool | None:
        """Count one probe result; the new verdict when this result changed it, else None."""
        if self.done:
            return None
        self._run = self._run + 1 if success == self._last else 1
        self._last = success
        needed = self.probe.success_threshold if success else self.probe.failure_threshold
        if self._run < needed:
            return None
        changed = success != self.verdict
        self.verdict = success
        if self.probe.kind == "startup" or (self.probe.kind == "liveness" and not success):
            self.done, self._run = True, 0
        return success if changed else None


def next_probe(probe: Probe, since_start: float) -> float:
    """When (seconds after the container started) the next probe is due, at or after ``since_start``.

    The first at ``initialDelaySeconds``, then every ``periodSeconds``; a tick missed while a slow probe ran is
    skipped, as the kubelet's ticker drops it.
    """
    if since_start <= probe.initial_delay:
        return probe.initial_delay
    ticks = math.ceil((since_start - probe.initial_delay) / probe.period - 1e-9)
    return probe.initial_delay + ticks * probe.period


def kill_grace(pod: Mapping[str, Any], probe: Probe | None = None) -> float:
    """The grace period of a kill, as the kubelet's ``setTerminationGracePeriod``.

    The pod's deletion grace when it is being deleted; else the failing probe's own
    ``terminationGracePeriodSeconds`` when set; else the pod's ``terminationGracePeriodSeconds`` (30 s).
    """
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    if probe is not None and probe.termination_grace is not None:
        return probe.termination_grace
    grace = spec.get("terminationGracePeriodSeconds")
    return float(grace) if grace is not None else DEFAULT_GRACE


def grace_after_pre_stop(grace: float, hook_seconds: float) -> float:
    """What is left of ``grace`` for SIGTERM after a preStop hook that took ``hook_seconds`` (whole seconds
    counted, as the kubelet counts them), never under the kubelet's 2-second minimum."""
    return max(grace - int(hook_seconds), MIN_GRACE_AFTER_PRE_STOP)


def kill_message(container: str, probe: Probe, policy: str) -> str:
    """The ``Killing`` event's message when a liveness or startup probe failed."""
    tail = ", will be restarted" if policy != "Never" else ""
    return f"Container {container} failed {probe.kind} probe{tail}"


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's ``port``: a number, or the name of one of the container's ports (the kubelet's rule)."""
    if isinstance(port, str):
        found = [p.get("containerPort") for p in container.get("ports") or () if p.get("name") == port]
        if not found:
            raise ProbeError(f"port {port!r} not found")
        port = found[0]
    number = int(port) if isinstance(port, int | float) else -1
    if not 0 < number < 65536:
        raise ProbeError(f"invalid port number: {port}")
    return number


@dataclass(frozen=True)
class HttpRequest:
    """An httpGet action resolved against the pod: where to connect, what to send."""

    scheme: str
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def http_request(action: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, purpose: str) -> HttpRequest:
    """The kubelet's ``NewRequestForHTTPGetAction``: the pod's IP unless ``host``, the port by number or name,
    ``httpHeaders`` in order, ``User-Agent: kube-<purpose>/1.37`` and ``Accept: */*`` unless given."""
    headers = [(str(h.get("name")), str(h.get("value", ""))) for h in action.get("httpHeaders") or ()]
    names = {name.lower() for name, _ in headers}
    if "user-agent" not in names:
        headers.append(("User-Agent", f"kube-{purpose}/{KUBE_VERSION}"))
    if "accept" not in names:
        headers.append(("Accept", "*/*"))
    headers = [(n, v) for n, v in headers if not (n.lower() == "accept" and v == "")]
    path = str(action.get("path") or "")
    if not path.startswith("/"):
        path = "/" + path
    return HttpRequest(
        scheme=str(action.get("scheme") or "HTTP").lower(),
        host=str(action.get("host") or pod_ip),
        port=resolve_port(action.get("port"), container),
        path=path,
        headers=tuple(headers),
    )


def probe_command(command: Sequence[Any], container: Mapping[str, Any]) -> list[str]:
    """An exec probe's argv: ``$(VAR)`` expanded from the container's literal env only, as the kubelet's
    ``ExpandContainerCommandOnlyStatic`` (a hook's command is not expanded)."""
    static = {
        str(v.get("name")): str(v.get("value", "")) for v in container.get("env") or () if v.get("valueFrom") is None
    }
    return [expand(str(part), static) for part in command]


def hook(container: Mapping[str, Any], which: Literal["postStart", "preStop"]) -> Mapping[str, Any] | None:
    """The container's ``lifecycle.postStart``/``preStop`` handler, or None."""
    handler = (container.get("lifecycle") or {}).get(which)
    return handler or None
