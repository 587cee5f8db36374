"""What the UI's pages show, as functions of the objects the watches delivered: no I/O here.

The inputs are the API server's JSON (plain dicts), not :class:`mljob.api.MLJob` models: the UI must show every
job it is given, even one the models would refuse (an older or hand-edited object), rather than hide it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from mljob.api import parse_time
from mljob.core import progress, text
from mljob.core.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE, Key
from mljob.core.progress import HISTORY_METRICS, HISTORY_POINTS

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
"""The phases in the order the plot stacks them: live work at the bottom, finished work on top."""

COLORS = {
    "Pending": "#9aa5b1",
    "Running": "#2f80ed",
    "Restarting": "#f2994a",
    "Suspended": "#bb6bd9",
    "Succeeded": "#27ae60",
    "Failed": "#eb5757",
}

# A condition that is True puts the job in the phase of the same name; Created means Pending.
_CONDITION_PHASE = {"Created": "Pending", **{p: p for p in PHASES if p != "Pending"}}


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def phase_of(job: Mapping[str, Any]) -> str:
    phase = str((job.get("status") or {}).get("phase") or "Pending")
    return phase if phase in PHASES else "Pending"


def age(created: str | None, now: datetime) -> str:
    """kubectl's AGE, or ``?`` where the time is missing (a narrow table cell)."""
    return text.age(created, now, unknown="?")


def replica_name(pod: Mapping[str, Any]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return f"{str(labels.get(LABEL_ROLE, '?')).lower()}-{labels.get(LABEL_INDEX, '?')}"


def _replica_order(pod: Mapping[str, Any]) -> tuple[str, int]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    index = str(labels.get(LABEL_INDEX, "0"))
    return str(labels.get(LABEL_ROLE, "")).lower(), int(index) if index.isdigit() else 0


def is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def pods_of(job: Key, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The job's pods (by the job-name label, in its namespace), in replica order."""
    namespace, name = job
    mine = [
        p
        for p in pods
        if key_of(p)[0] == namespace and ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) == name
    ]
    return sorted(mine, key=_replica_order)


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs table."""

    namespace: str
    name: str
    framework: str
    phase: str
    ready: int
    total: int
    restarts: int
    age: str
    message: str
    progress: JobProgress | None = None
    """None for a job that never reported its progress: no bar, no section."""


def job_row(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime) -> JobRow:
    namespace, name = key_of(job)
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    specs = spec.get("replicaSpecs") or {}
    total = sum(int((s or {}).get("replicas", 1) or 0) for s in specs.values()) if isinstance(specs, dict) else 0
    return JobRow(
        namespace=namespace,
        name=name,
        framework=str(spec.get("framework") or "?"),
        phase=phase_of(job),
        ready=sum(1 for p in pods if is_ready(p)),
        total=total,
        restarts=int(status.get("restartCount") or 0),
        age=age((job.get("metadata") or {}).get("creationTimestamp"), now),
        message=str(status.get("message") or ""),
        progress=progress_of(status, now),
    )


def job_rows(jobs: Mapping[Key, Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], now: datetime) -> list[JobRow]:
    """Every job, newest first (the one just submitted is the one a person looks for)."""
    by_job: dict[Key, list[Mapping[str, Any]]] = {}
    for pod in pods:
        label = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB)
        if label:
            by_job.setdefault((key_of(pod)[0], str(label)), []).append(pod)
    ordered = sorted(
        jobs.items(),
        key=lambda kv: (str((kv[1].get("metadata") or {}).get("creationTimestamp") or ""), kv[0]),
        reverse=True,
    )
    return [job_row(job, by_job.get(key, []), now) for key, job in ordered]


@dataclass(frozen=True)
class Replica:
    """One replica's pod as the job page shows it."""

    replica: str
    pod: str
    phase: str
    ready: bool
    restarts: int
    node: str
    ip: str
    reason: str


def replicas(pods: Sequence[Mapping[str, Any]]) -> list[Replica]:
    rows = []
    for pod in pods:
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        reasons = [
            str(state.get("reason") or "")
            for c in containers
            for state in ((c.get("state") or {}).get("waiting"), (c.get("state") or {}).get("terminated"))
            if state
        ]
        rows.append(
            Replica(
                replica=replica_name(pod),
                pod=str((pod.get("metadata") or {}).get("name") or ""),
                phase=str(status.get("phase") or "Pending"),
                ready=is_ready(pod),
                restarts=sum(int(c.get("restartCount") or 0) for c in containers),
                node=str((pod.get("spec") or {}).get("nodeName") or "(not scheduled)"),
                ip=str(status.get("podIP") or ""),
                reason=str(status.get("reason") or next((r for r in reasons if r), "")),
            )
        )
    return rows


@dataclass(frozen=True)
class EventRow:
    type: str
    reason: str
    object: str
    message: str
    count: int
    last_seen: str


def event_rows(
    events: Iterable[Mapping[str, Any]], job: Key, pod_names: Iterable[str], now: datetime, limit: int = 30
) -> list[EventRow]:
    """The Events about the job and its pods, newest last (as kubectl describe lists them)."""
    names = {job[1], *pod_names}
    # A replica's pod that is gone (cleaned up, recreated) keeps its Events: they name it JOB-ROLE-INDEX.
    replica_pod = re.compile(rf"{re.escape(job[1])}-[a-z0-9]+-\d+")
    mine = []
    for event in events:
        involved = event.get("involvedObject") or {}
        name = str(involved.get("name") or "")
        if involved.get("namespace", job[0]) != job[0]:
            continue
        if name not in names and not (involved.get("kind") == "Pod" and replica_pod.fullmatch(name)):
            continue
        when = str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")
        mine.append((when, event))
    mine.sort(key=lambda pair: pair[0])
    return [
        EventRow(
            type=str(e.get("type") or ""),
            reason=str(e.get("reason") or ""),
            object=f"{str((e.get('involvedObject') or {}).get('kind') or '').lower()}/"
            f"{(e.get('involvedObject') or {}).get('name') or ''}",
            message=str(e.get("message") or e.get("note") or ""),
            count=int(e.get("count") or 1),
            last_seen=age(when, now) if when else "?",
        )
        for when, e in mine[-limit:]
    ]


# --- phase over time -----------------------------------------------------------------------------------------

Timeline = list[tuple[datetime, str]]
"""A job's phases with the moment each began, oldest first; the job exists from the first entry on."""


def timeline_from_conditions(job: Mapping[str, Any]) -> Timeline:
    """The job's history as its conditions tell it: creation (Pending), then each True condition's last
    transition. Kubernetes keeps one condition per type, so an earlier stay in a phase the job has since
    re-entered is lost: the UI uses this only for what happened before it started watching."""
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return []
    points: Timeline = [(created, "Pending")]
    for condition in (job.get("status") or {}).get("conditions") or []:
        phase = _CONDITION_PHASE.get(str(condition.get("type")))
        when = parse_time(condition.get("lastTransitionTime"))
        if phase and when is not None and condition.get("status") == "True" and phase != "Pending":
            points.append((max(when, created), phase))
    points.sort(key=lambda p: p[0])
    return points


@dataclass
class History:
    """Every job's phase over time: rebuilt from conditions for the past, observed from the watch since ``since``.

    Deleted jobs keep their history until ``retention`` has passed, so the plot does not rewrite the past.
    """

    since: datetime
    retention: timedelta = timedelta(hours=6)
    timelines: dict[Key, Timeline] = field(default_factory=dict)
    gone: dict[Key, datetime] = field(default_factory=dict)

    def observe(self, job: Mapping[str, Any], now: datetime) -> None:
        key = key_of(job)
        phase = phase_of(job)
        line = self.timelines.get(key)
        if line is None or key in self.gone:
            self.gone.pop(key, None)
            past = [p for p in timeline_from_conditions(job) if p[0] < self.since]
            line = past or [(now, "Pending")]
            self.timelines[key] = line
        if line[-1][1] != phase:
            line.append((max(now, line[-1][0]), phase))

    def delete(self, key: Key, now: datetime) -> None:
        if key in self.timelines:
            self.gone[key] = now
        self.expire(now)

    def expire(self, now: datetime) -> None:
        for key, when in list(self.gone.items()):
            if now - when > self.retention:
                del self.gone[key], self.timelines[key]

    def counts(self, at: datetime) -> Counter[str]:
        """How many jobs were in each phase at ``at``."""
        counted: Counter[str] = Counter()
        for key, line in self.timelines.items():
            ended = self.gone.get(key)
            if not line or line[0][0] > at or (ended is not None and ended <= at):
                continue
            counted[next(phase for when, phase in reversed(line) if when <= at)] += 1
        return counted

    def series(self, start: datetime, end: datetime, samples: int = 120) -> list[tuple[datetime, Counter[str]]]:
        step = (end - start) / max(1, samples - 1)
        return [(start + step * i, self.counts(start + step * i)) for i in range(samples)]


def plot_window(history: History, now: datetime, longest: timedelta = timedelta(hours=6)) -> datetime:
    """Where the plot starts: the first job's creation, no further back than ``longest``, at least a minute ago."""
    first = min((line[0][0] for line in history.timelines.values() if line), default=now)
    return min(max(first, now - longest), now - timedelta(minutes=1))


def phase_plot(series: Sequence[tuple[datetime, Counter[str]]], width: int = 720, height: int = 180) -> str:
    """An SVG of the jobs per phase over time, stacked; one ``<path data-phase=...>`` per phase with any jobs.

    Server-rendered so the page needs no charting library; the numbers behind it are in the page's table too.
    """
    left, right, top, bottom = 36, 8, 8, 22
    inner_w, inner_h = width - left - right, height - top - bottom
    peak = max((sum(c.values()) for _, c in series), default=0)
    scale = max(1, peak)
    n = len(series)

    def x(i: int) -> float:
        return left + inner_w * (i / max(1, n - 1))

    def y(value: float) -> float:
        return top + inner_h * (1 - value / scale)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="phase-plot" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" data-peak="{peak}">',
        "<title>MLJobs per phase over time</title>",
        f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + inner_h}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak}</text>',
        f'<text x="{left - 4}" y="{top + inner_h}" text-anchor="end" class="tick">0</text>',
    ]
    if series:
        first, last = series[0][0], series[-1][0]
        parts.append(
            f'<text x="{left}" y="{height - 6}" class="tick">{first.astimezone(UTC):%H:%M:%S}</text>'
            f'<text x="{left + inner_w}" y="{height - 6}" text-anchor="end" class="tick">'
            f"{last.astimezone(UTC):%H:%M:%S} UTC</text>"
        )
    below = [0.0] * n
    for phase in PHASES:
        values = [float(c.get(phase, 0)) for _, c in series]
        if not any(values):
            continue
        above = [b + v for b, v in zip(below, values, strict=True)]
        # Steps, not slopes: a job changes phase at an instant. Only the changes make corners.
        top_edge = _steps([x(i) for i in range(n)], [y(a) for a in above])
        bottom_edge = list(reversed(_steps([x(i) for i in range(n)], [y(b) for b in below])))
        parts.append(
            f'<path class="band" data-phase="{phase}" data-now="{int(values[-1])}" fill="{COLORS[phase]}" '
            f'd="M {" ".join(top_edge)} L {" ".join(bottom_edge)} Z"><title>{phase}</title></path>'
        )
        below = above
    parts.append("</svg>")
    return "\n".join(parts)


def _steps(xs: Sequence[float], ys: Sequence[float]) -> list[str]:
    """The corners of a step line through (xs[i], ys[i]): each value holds until the next sample changes it."""
    points = [(xs[0], ys[0])]
    for i in range(1, len(xs)):
        if ys[i] != ys[i - 1]:
            points += [(xs[i], ys[i - 1]), (xs[i], ys[i])]
    points.append((xs[-1], ys[-1]))
    return [f"{px:.1f},{py:.1f}" for px, py in points]


# --- training progress ---------------------------------------------------------------------------------------

CHART_POINTS = 4 * HISTORY_POINTS
"""Points drawn per curve at most: the operator keeps 128, so only a hand-edited status is thinned to this."""


@dataclass(frozen=True)
class Curve:
    """One metric's points as ``status.metricHistory`` holds them: x the step, y the value, in the order given."""

    name: str
    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class JobProgress:
    """What a job's status says of its training's progress, for the list's bar, the job page and ``describe``.

    Everything here comes from the job's status, which the operator keeps for the job's life: the curves survive
    restarts of the UI and of the operator, and a job that is deleted takes them with it.
    """

    label: str
    """``42%``, or ``step 420`` when no total is known (``status.progress``, kubectl's PROGRESS column)."""
    percent: int | None
    step: int | None
    total: int | None
    eta: str
    """``3m10s``, empty when unknown or over (``status.eta``)."""
    updated: datetime | None
    """When the latest report was made (``trainerStatus.lastUpdatedTime``)."""
    reported: str
    """How long ago that was, kubectl's AGE (``12s``); empty when unknown."""
    metrics: tuple[tuple[str, str], ...]
    """The latest value of each metric, as reported (values are strings on the wire)."""
    curves: tuple[Curve, ...]
    """The metric histories, the main one (``loss`` if any, else the first) first."""

    @property
    def width(self) -> str | None:
        """The bar's filled width as CSS (``42%``); None when only a step is known (no bar, just the label)."""
        return None if self.percent is None else f"{self.percent}%"

    @property
    def steps(self) -> str:
        """``420/1000``, ``420`` with no total known, empty with no step."""
        if self.step is None:
            return ""
        return f"{self.step}/{self.total}" if self.total is not None else str(self.step)


def _count(value: object, low: int, high: int | None = None) -> int | None:
    """An integer field of a status that may have been written by anyone: None unless a whole number in range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        return None
    number = int(value)
    return number if number >= low and (high is None or number <= high) else None


def _curves(history: object) -> tuple[Curve, ...]:
    """The well-formed curves of ``status.metricHistory`` (points that are not numbers are dropped), main first."""
    curves = []
    for item in history if isinstance(history, list) else ():
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        xs, ys = item.get("x"), item.get("y")
        if not isinstance(xs, list) or not isinstance(ys, list):
            continue
        points = []
        for x, y in zip(xs, ys, strict=False):
            step = _count(x, 0)
            value = float(y) if isinstance(y, int | float) and not isinstance(y, bool) else math.nan
            if step is not None and math.isfinite(value):
                points.append((step, value))
        if len(points) > CHART_POINTS:  # every k-th, counted from the last so the latest point stays
            stride = math.ceil(len(points) / CHART_POINTS)
            points = points[::-1][::stride][::-1]
        if points:
            curves.append(Curve(item["name"], tuple(points)))
        if len(curves) == HISTORY_METRICS:
            break
    main = next((c for c in curves if c.name == "loss"), curves[0] if curves else None)
    return tuple([main, *(c for c in curves if c is not main)] if main is not None else [])


def progress_of(status: Mapping[str, Any] | None, now: datetime) -> JobProgress | None:
    """The job's progress from its status (the API server's JSON), or None for a job that never reported.

    The display strings are the operator's (``status.progress``, ``status.eta``); a status written without them
    (by another tool, in Trainer's bare shape) gets them computed from ``trainerStatus`` the way the operator would.
    """
    status = status or {}
    trainer = status.get("trainerStatus")
    trainer = trainer if isinstance(trainer, Mapping) else {}
    curves = _curves(status.get("metricHistory"))
    if not trainer and not curves:
        return None
    percent = _count(trainer.get("progressPercentage"), 0, 100)
    step = _count(trainer.get("step"), 0)
    total = _count(trainer.get("totalSteps"), 1)
    label = status.get("progress")
    if not isinstance(label, str):
        label = f"{percent}%" if percent is not None else (f"step {step}" if step is not None else "")
    eta = status.get("eta")
    if not isinstance(eta, str):
        eta = progress.duration(_count(trainer.get("estimatedRemainingSeconds"), 0))
    metrics = tuple(
        (str(m["name"]), str(m["value"]))
        for m in trainer.get("metrics") or ()
        if isinstance(m, Mapping) and m.get("name") is not None and m.get("value") is not None
    )
    raw_time = trainer.get("lastUpdatedTime")
    updated = parse_time(raw_time) if isinstance(raw_time, str) else None
    if updated is not None and updated.tzinfo is None:  # no zone: not a Kubernetes time, and not comparable
        updated = None
    return JobProgress(
        label=label,
        percent=percent,
        step=step,
        total=total,
        eta=eta,
        updated=updated,
        reported=text.age(raw_time, now, unknown="") if updated is not None else "",
        metrics=metrics[: progress.MAX_METRICS],
        curves=curves,
    )


def _number(value: float) -> str:
    """An axis label: four significant digits (``0.0421``, ``1.235e+04``)."""
    return f"{value:.4g}"


def metric_chart(curve: Curve, width: int = 320, height: int = 120) -> Markup:
    """A small SVG line chart of one curve, drawn on the server: the polyline, the latest point, and the extremes
    as labels (the value's min and max at the left, the first and last step below). No charting library.

    The x axis spans the first to the last step, the y axis the least to the greatest value; a single point, or a
    flat line, sits in the middle of the axis that has no extent. The metric's name is the user's: escaped.
    """
    left, right, top, bottom = 48, 8, 8, 18
    inner_w, inner_h = width - left - right, height - top - bottom
    xs, ys = [p[0] for p in curve.points], [p[1] for p in curve.points]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)

    def px(x: int) -> float:
        return left + inner_w / 2 if x_hi == x_lo else left + inner_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return top + inner_h / 2 if y_hi == y_lo else top + inner_h * (1 - (y - y_lo) / (y_hi - y_lo))

    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in curve.points)
    name = escape(curve.name)
    last_x, last_y = curve.points[-1]
    return Markup(
        "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" class="metric-chart" role="img" '
                f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" data-metric="{name}" '
                f'data-points="{len(curve.points)}">',
                f"<title>{name} by step</title>",
                f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" class="axis"/>',
                f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + inner_h}" class="axis"/>',
                f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick y-max">{_number(y_hi)}</text>',
                f'<text x="{left - 4}" y="{top + inner_h}" text-anchor="end" class="tick y-min">{_number(y_lo)}</text>',
                f'<text x="{left}" y="{height - 4}" class="tick x-first">{xs[0]}</text>',
                f'<text x="{left + inner_w}" y="{height - 4}" text-anchor="end" class="tick x-last">{xs[-1]}</text>',
                f'<polyline class="curve" fill="none" points="{points}"/>',
                f'<circle class="latest" cx="{px(last_x):.1f}" cy="{py(last_y):.1f}" r="2.5">'
                f"<title>{name} {_number(last_y)} at step {last_x}</title></circle>",
                "</svg>",
            ]
        )
    )
