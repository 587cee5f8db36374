"""Training progress: what a running job reports, checked, folded into what its status says.

Pure: the operator's endpoint (:mod:`mljob.operator.progress`) and ``mljob run``'s
(:mod:`mljob.local.progress`) parse with :func:`parse_report`, fold with :func:`fold`, write
:func:`status_fields` and render the pods' wiring with :func:`pod_wiring`. No I/O, no clock: ``now`` is given.

The protocol is Kubeflow Trainer's ``TrainJobStatus`` (KEP-2779, Trainer v2.2): a POST of
``{"trainerStatus": {"progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name", "value"}],
"lastUpdatedTime"}}`` with a bearer token bound to the pod, the URL, CA and token path given in
``KUBEFLOW_TRAINER_SERVER_URL``, ``KUBEFLOW_TRAINER_SERVER_CA_CERT`` and ``KUBEFLOW_TRAINER_SERVER_TOKEN``.
mljob adds two optional integers, ``step`` and ``totalSteps`` (Trainer's server ignores unknown fields, so
mljob's helper works against Trainer too): from them the percentage and the ETA are computed when the report
does not give them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from mljob.api import API_VERSION, PLURAL, format_time, parse_time

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
"""Trainer's env names (``pkg/runtime/framework/plugins/trainjobstatus``): the SDK's helper reads exactly these."""
MOUNT_PATH = "/var/run/secrets/kubeflow/trainer"
"""Where Trainer mounts the token and CA; the same here, so a script that reads the files directly works too."""
VOLUME = "kubeflow-trainer-token"
TOKEN_FILE = "token"
CA_FILE = "ca.crt"
TOKEN_SECONDS = 3600
"""The projected token's lifetime, Trainer's; the kubelet (and the node agent) renew it at 80%."""
CA_ANNOTATION = "mljob.io/progress-ca"
"""The pod annotation holding the endpoint's CA certificate, projected into the pod as ``ca.crt`` by the downward
API: one object fewer per job than Trainer's ``<job>-tls-config`` ConfigMap, and no ConfigMap rights needed."""

MAX_BODY = 1 << 16
"""Bytes in one report, Trainer's limit (64 KiB)."""
MAX_METRICS = 256
MAX_TEXT = 64
"""Characters in a metric's name and in its value, and metrics in a report: Trainer's CRD limits."""
MAX_ETA = 2**31 - 1
"""Seconds in an ETA: Trainer's field is an int32; a computed ETA is capped at it, so what is written is read back."""
MAX_STEPS = 1 << 53
"""Steps beyond this are not a count anyone trains to; refused rather than stored as a float."""
FUTURE_SLACK = timedelta(minutes=10)
"""How far ahead of the operator's clock a report's ``lastUpdatedTime`` may be before it is refused."""
HISTORY_POINTS = 128
"""Points kept per metric for the UI's curve: when full, every other is dropped and the spacing doubles, so the
curve always covers the job's whole life in at most this many points."""
HISTORY_METRICS = 8
"""Numeric metrics with a curve, the first reported; the others have their latest value only."""
INTERVAL = 3.0
"""Seconds between two status patches of one job: many reports a second cost one patch per interval."""


def audience(namespace: str, name: str) -> str:
    """The audience a job's pods' tokens are bound to, as Trainer's (``trainer.kubeflow.org/v1alpha1/...``):
    a token of one job is refused by every other job's endpoint."""
    return f"{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"


def path(namespace: str, name: str) -> str:
    """The endpoint's path for one job, shaped as Trainer's (``/apis/trainer.kubeflow.org/v1alpha1/...``)."""
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"


class ReportError(ValueError):
    """A report that is refused: the field path and what is wrong with it."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field_path = field_path
        self.message = message


@dataclass(frozen=True)
class Report:
    """One checked report. ``metrics`` keeps the names and values as sent, in order (values are strings on the
    wire, as Trainer's)."""

    percent: int | None = None
    eta_seconds: int | None = None
    metrics: tuple[tuple[str, str], ...] = ()
    step: int | None = None
    total: int | None = None
    time: datetime | None = None

    @property
    def empty(self) -> bool:
        """Trainer answers a request without ``trainerStatus`` with 200 and writes nothing: so does mljob."""
        return self == Report()

    def wire(self) -> dict[str, Any]:
        """The report as it was understood, Trainer's 200 body (it echoes the parsed request): ``{}`` for a
        request without ``trainerStatus``."""
        if self.empty:
            return {}
        return {"trainerStatus": trainer_fields(self.percent, self.eta_seconds, self.metrics, self.step, self.total,
                                                self.time)}  # fmt: skip


def trainer_fields(
    percent: int | None,
    eta: int | None,
    metrics: Sequence[tuple[str, str]],
    step: int | None,
    total: int | None,
    time: datetime | None,
) -> dict[str, Any]:
    """``trainerStatus`` in Trainer's shape (plus ``step`` and ``totalSteps``), the fields that are known."""
    out: dict[str, Any] = {}
    if percent is not None:
        out["progressPercentage"] = percent
    if eta is not None:
        out["estimatedRemainingSeconds"] = eta
    if metrics:
        out["metrics"] = [{"name": n, "value": v} for n, v in metrics]
    if step is not None:
        out["step"] = step
    if total is not None:
        out["totalSteps"] = total
    if time is not None:
        out["lastUpdatedTime"] = format_time(time)
    return out


REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
"""Kubernetes' ``metav1.StatusReason`` for each code an endpoint answers."""


def failure(code: int, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Kubernetes ``Status`` body for a refusal, as the API server (and Trainer's endpoint) writes one."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


@dataclass
class TokenBucket:
    """A rate limit: ``rate`` requests a second on average, ``burst`` at once. Times are monotonic seconds."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    """Requests that may go now: full at first, one used by each request let through, refilled at ``rate``."""
    at: float | None = field(default=None, init=False)
    """When ``tokens`` was last worked out."""

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Take one request: 0 when it may go, else the seconds until one would be let through."""
        if self.at is not None:
            self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def _int(value: object, where: str, low: int, high: int) -> int:
    """A JSON integer in ``[low, high]``; a float with no fraction (``42.0``) is taken, as Go's decoder takes it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(where, f"must be an integer, got {json.dumps(value)[:40]}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ReportError(where, f"must be an integer, got {value}")
        value = int(value)
    if not low <= value <= high:
        raise ReportError(where, f"must be between {low} and {high}, got {value}")
    return value


def parse_report(body: bytes | str | Any, now: datetime) -> Report:
    """Check one request body against Trainer's ``UpdateTrainJobStatusRequest`` (and mljob's two step fields).

    What Trainer's CRD would refuse is refused here, with the field path: a percentage outside 0-100, a negative
    ETA, more than 256 metrics, an empty or over-long name or value, a time that does not parse. Stricter on
    purpose: a step above ``totalSteps``, a non-finite metric and a time far in the future are refused too.
    """
    if isinstance(body, bytes | str):
        if len(body) > MAX_BODY or (isinstance(body, str) and len(body.encode()) > MAX_BODY):
            raise ReportError("", f"a report is at most {MAX_BODY} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: [[[[... nested too deep
            raise ReportError("", f"not JSON: {error}") from None
    else:
        data = body
    if not isinstance(data, Mapping):
        raise ReportError("", "must be a JSON object with trainerStatus")
    status = data.get("trainerStatus")
    if status is None:
        return Report()
    if not isinstance(status, Mapping):
        raise ReportError("trainerStatus", "must be an object")
    where = "trainerStatus."
    percent = eta = step = total = None
    if status.get("progressPercentage") is not None:
        percent = _int(status["progressPercentage"], where + "progressPercentage", 0, 100)
    if status.get("estimatedRemainingSeconds") is not None:
        eta = _int(status["estimatedRemainingSeconds"], where + "estimatedRemainingSeconds", 0, MAX_ETA)
    if status.get("step") is not None:
        step = _int(status["step"], where + "step", 0, MAX_STEPS)
    if status.get("totalSteps") is not None:
        total = _int(status["totalSteps"], where + "totalSteps", 1, MAX_STEPS)
    if step is not None and total is not None and step > total:
        raise ReportError(where + "step", f"{step} is above totalSteps {total}")
    metrics = _metrics(status.get("metrics"), where + "metrics")
    when = None
    raw_time = status.get("lastUpdatedTime")
    if raw_time is not None:
        when = parse_time(raw_time) if isinstance(raw_time, str) else None
        if when is None or when.tzinfo is None:
            raise ReportError(where + "lastUpdatedTime", f"must be an RFC 3339 time, got {json.dumps(raw_time)[:40]}")
        if when > now + FUTURE_SLACK:
            raise ReportError(where + "lastUpdatedTime", f"{raw_time} is in the future")
    return Report(percent, eta, metrics, step, total, when)


def _metrics(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ReportError(where, "must be a list of {name, value}")
    if len(value) > MAX_METRICS:
        raise ReportError(where, f"at most {MAX_METRICS} metrics, got {len(value)}")
    out: dict[str, str] = {}
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ReportError(at, "must be an object with name and value")
        name, raw = item.get("name"), item.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_TEXT:
            raise ReportError(at + ".name", f"must be a string of 1 to {MAX_TEXT} characters")
        if isinstance(raw, bool) or raw is None or not isinstance(raw, str | int | float):
            raise ReportError(at + ".value", "must be a string (or a number)")
        text = raw if isinstance(raw, str) else repr(raw)
        if not 1 <= len(text) <= MAX_TEXT:
            raise ReportError(at + ".value", f"must be 1 to {MAX_TEXT} characters")
        if number(text) is None and _float(text) is not None:  # nan, -Infinity, 1e999: what float() takes
            raise ReportError(at + ".value", f"{text!r} is not a finite number")
        out[name] = text  # a name sent twice: the last value, as a dict in the SDK would have it
    return tuple(out.items())


def number(text: str) -> float | None:
    """A metric's value as a number, or None when it is not one (a metric may be any string)."""
    value = _float(text)
    return value if value is not None and math.isfinite(value) else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Curve:
    """One numeric metric's history: ``x`` is the step (the report's count when no step is given)."""

    name: str
    x: tuple[int, ...] = ()
    y: tuple[float, ...] = ()

    @property
    def spacing(self) -> int:
        """The least distance between two kept points: it doubles each time the curve is thinned.

        The least over the whole curve, not the last gap: with steps that come unevenly (37, 38, 37...), a last
        gap would grow by each skipped point and the curve thin out without ever filling."""
        return max(1, min(b - a for a, b in zip(self.x, self.x[1:], strict=False))) if len(self.x) > 1 else 1

    def add(self, x: int, y: float) -> Curve:
        """The curve with (x, y), unless it falls within the spacing of the last point; thinned when full.

        An x below the last (training resumed from an earlier checkpoint) drops the points after it."""
        xs, ys = list(self.x), list(self.y)
        while xs and x < xs[-1]:
            xs.pop()
            ys.pop()
        if xs and x - xs[-1] < self.spacing and x != xs[-1]:
            return replace(self, x=tuple(xs), y=tuple(ys)) if len(xs) != len(self.x) else self
        if xs and x == xs[-1]:
            ys[-1] = y
        else:
            xs.append(x)
            ys.append(y)
        if len(xs) > HISTORY_POINTS:
            xs, ys = xs[::2], ys[::2]
        return Curve(self.name, tuple(xs), tuple(ys))


@dataclass(frozen=True)
class Progress:
    """What is known of one job's progress: the latest report's values, and what the ETA is computed from.

    ``anchor`` is the (time, step or percent) the rate is measured from: the first report, or the first after
    training went backwards (a restart from a checkpoint)."""

    percent: int | None = None
    eta_seconds: int | None = None
    step: int | None = None
    total: int | None = None
    metrics: tuple[tuple[str, str], ...] = ()
    updated: datetime | None = None
    reports: int = 0
    anchor: tuple[datetime, float] | None = None
    curves: tuple[Curve, ...] = ()

    def to_status(self) -> dict[str, Any]:
        """``status.trainerStatus`` (Trainer's shape, plus ``step`` and ``totalSteps``), and mljob's display
        strings and curves: the merge patch's ``status`` fields."""
        trainer = trainer_fields(self.percent, self.eta_seconds, self.metrics, self.step, self.total, self.updated)
        out: dict[str, Any] = {"trainerStatus": trainer, "progress": self.display(), "eta": duration(self.eta_seconds)}
        if self.curves:
            out["metricHistory"] = [{"name": c.name, "x": list(c.x), "y": list(c.y)} for c in self.curves]
        return out

    def display(self) -> str:
        """What ``kubectl get``'s PROGRESS column says: ``42%``, or ``step 420`` when no total is known."""
        if self.percent is not None:
            return f"{self.percent}%"
        if self.step is not None:
            return f"step {self.step}"
        return ""


def duration(seconds: int | None) -> str:
    """``1h2m``, ``3m10s``, ``42s``: kubectl's short style; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def fold(state: Progress, report: Report, now: datetime) -> Progress:
    """``state`` with ``report`` taken in, at ``now`` (the operator's clock, which the rate is measured by).

    The percentage is the report's, else ``step / totalSteps``; the ETA is the report's, else the rate since the
    anchor applied to what is left. Metrics keep the latest value of each name; the numeric ones get a curve."""
    if report.empty:
        return state
    step = report.step if report.step is not None else state.step
    total = report.total if report.total is not None else state.total
    if step is not None and total is not None and step > total:
        total = None  # a total from an earlier report that this step has passed: unknown now
    percent = report.percent
    if percent is None and step is not None and total is not None:
        percent = min(100, int(100 * step / total))
    if percent is None and report.step is None:
        percent = state.percent
    position = (
        float(step) if step is not None and total is not None else (float(percent) if percent is not None else None)
    )
    anchor = state.anchor
    previous = _position(state)
    if position is not None and (anchor is None or (previous is not None and position < previous)):
        anchor = (now, position)
    eta = report.eta_seconds
    if eta is None and position is not None and anchor is not None:
        eta = _eta(anchor, now, position, float(total) if step is not None and total is not None else 100.0)
    if percent == 100:
        eta = 0
    metrics = dict(state.metrics)
    metrics.update(report.metrics)
    reports = state.reports + 1
    x = step if step is not None else reports
    curves = {c.name: c for c in state.curves}
    for name, text in report.metrics:
        value = number(text)
        if value is None:
            continue
        if name in curves:
            curves[name] = curves[name].add(x, value)
        elif len(curves) < HISTORY_METRICS:
            curves[name] = Curve(name).add(x, value)
    return Progress(
        percent=percent,
        eta_seconds=eta,
        step=step,
        total=total,
        metrics=tuple(metrics.items())[:MAX_METRICS],
        updated=report.time or now,
        reports=reports,
        anchor=anchor,
        curves=tuple(curves.values()),
    )


def _position(state: Progress) -> float | None:
    if state.step is not None and state.total is not None:
        return float(state.step)
    return float(state.percent) if state.percent is not None else None


def _eta(anchor: tuple[datetime, float], now: datetime, position: float, end: float) -> int | None:
    """Seconds left at the average rate since the anchor; None until there is a rate to go by."""
    since, start = anchor
    elapsed = (now - since).total_seconds()
    done = position - start
    if elapsed <= 0 or done <= 0:
        return None
    return min(MAX_ETA, max(0, round((end - position) * elapsed / done)))


def from_status(status: Mapping[str, Any] | None, now: datetime) -> Progress:
    """What a job's status already says, so an operator that restarted goes on from it (the rate starts over).

    Never raises: what does not read back is left out (all of it when ``trainerStatus`` is refused)."""
    if not isinstance(status, Mapping):
        return Progress()
    trainer = status.get("trainerStatus") or {}
    if not isinstance(trainer, Mapping) or not trainer:
        return Progress()
    try:
        report = parse_report({"trainerStatus": dict(trainer)}, now + FUTURE_SLACK)
    except ReportError:
        return Progress()
    curves = []
    history = status.get("metricHistory")
    for item in history if isinstance(history, list) else ():
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            xs, ys = item.get("x") or [], item.get("y") or []
            if isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys):
                try:
                    curve = Curve(item["name"], tuple(int(x) for x in xs), tuple(float(y) for y in ys))
                except (TypeError, ValueError, OverflowError):
                    continue
                if all(math.isfinite(y) for y in curve.y):
                    curves.append(curve)
    return Progress(
        percent=report.percent,
        eta_seconds=report.eta_seconds,
        step=report.step,
        total=report.total,
        metrics=report.metrics,
        updated=report.time,
        reports=max((c.x[-1] for c in curves if c.x), default=0),  # a curve without steps goes on from its last x
        curves=tuple(curves[:HISTORY_METRICS]),
    )


def finished(status: Mapping[str, Any] | None, succeeded: bool) -> dict[str, Any] | None:
    """The progress fields of a job that just ended: 100% and no time left when it succeeded, the ETA dropped when
    it failed; None when the job never reported (no progress fields appear on a job that does not report)."""
    status = status or {}
    trainer = status.get("trainerStatus")
    if not isinstance(trainer, Mapping) or not trainer:
        return None
    fields: dict[str, Any] = {}
    if succeeded:
        new = {**trainer, "progressPercentage": 100, "estimatedRemainingSeconds": 0}
        if trainer.get("totalSteps") is not None:
            new["step"] = trainer["totalSteps"]
        if new != trainer:
            fields["trainerStatus"] = new
        if status.get("progress") != "100%":
            fields["progress"] = "100%"
    elif trainer.get("estimatedRemainingSeconds") is not None:
        fields["trainerStatus"] = {**{k: v for k, v in trainer.items() if k != "estimatedRemainingSeconds"}}
    if status.get("eta"):
        fields["eta"] = ""
    return fields or None


@dataclass
class Coalescer:
    """Which jobs' progress is due to be written: at most one patch per job per ``interval`` seconds, the first
    report of a job written at once. Times are monotonic seconds; the caller owns the clock."""

    interval: float = INTERVAL
    pending: dict[Any, float] = field(default_factory=dict)
    """Jobs with a report not yet written, and when they may be written next."""
    written: dict[Any, float] = field(default_factory=dict)
    """When each job was last written."""

    def touch(self, key: Any, now: float) -> bool:
        """A report of ``key`` came at ``now``; True when that made it pending (a writer waiting needs waking)."""
        if key in self.pending:
            return False
        last = self.written.get(key)
        self.pending[key] = now if last is None else max(now, last + self.interval)
        return True

    def due(self, now: float) -> list[Any]:
        """The jobs to write now, taken off the pending list (and marked written at ``now``)."""
        ready = [key for key, at in self.pending.items() if at <= now]
        for key in ready:
            del self.pending[key]
            self.written[key] = now
        return ready

    def next_at(self) -> float | None:
        """When the next job falls due, or None when none is pending."""
        return min(self.pending.values(), default=None)

    def forget(self, key: Any) -> None:
        """A job that is gone or finished: nothing more is written for it."""
        self.pending.pop(key, None)
        self.written.pop(key, None)


@dataclass(frozen=True)
class Endpoint:
    """Where the pods of a cluster report: the base URL (``https://mljob-operator.mljob-system.svc:9445``) and
    the PEM of the certificate that signs the endpoint's, which the pods trust."""

    url: str
    ca_pem: str


def pod_wiring(pod: dict[str, Any], endpoint: Endpoint, namespace: str, name: str) -> None:
    """Give ``pod`` (in place) Trainer's env in every container, and the projected volume with a token bound to
    the pod for this job's audience and the CA: what Trainer's ``TrainJobStatus`` plugin gives a trainer pod.

    A container that sets one of the env names itself keeps its value; a pod that already has the volume (a
    template written for Trainer) keeps its own."""
    spec = pod.setdefault("spec", {})
    meta = pod.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), CA_ANNOTATION: endpoint.ca_pem}  # or {}: null in YAML
    if not spec.get("serviceAccountName") and not spec.get("serviceAccount"):
        spec["serviceAccountName"] = "default"  # a token projection needs one; admission would set the same
    env = {
        ENV_URL: endpoint.url.rstrip("/") + path(namespace, name),
        ENV_CA_CERT: f"{MOUNT_PATH}/{CA_FILE}",
        ENV_TOKEN: f"{MOUNT_PATH}/{TOKEN_FILE}",
    }
    for container in spec.get("containers") or ():
        have = {e.get("name") for e in container.get("env") or ()}
        container["env"] = [
            *(container.get("env") or ()),
            *({"name": k, "value": v} for k, v in env.items() if k not in have),
        ]
        mounts = container["volumeMounts"] = container.get("volumeMounts") or []
        if not any(m.get("name") == VOLUME or m.get("mountPath") == MOUNT_PATH for m in mounts):
            mounts.append({"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True})
    volumes = spec["volumes"] = spec.get("volumes") or []
    if not any(v.get("name") == VOLUME for v in volumes):
        volumes.append(
            {
                "name": VOLUME,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": audience(namespace, name),
                                "expirationSeconds": TOKEN_SECONDS,
                                "path": TOKEN_FILE,
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": CA_FILE,
                                        "fieldRef": {"fieldPath": f"metadata.annotations['{CA_ANNOTATION}']"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        )
