"""The operator's progress endpoint: training code POSTs reports, the job's status shows them.

Kubeflow Trainer's ``TrainJobStatus`` protocol (:mod:`mljob.core.progress`), served over HTTPS with the webhook's
key pair at ``/apis/mljob.io/v1alpha1/namespaces/{namespace}/mljobs/{name}/status``. Every replica serves it (a
report reaching the passive replica of a peering is not lost): it writes only the job's progress fields, never
what the reconciler decides.

A request is checked cheapest first, and a refusal never touches the job:
1. the bearer token (401 without one, 403 otherwise): a ``TokenReview`` for the job's own audience, so a token of
   another job fails, then the pod the token is bound to must be one of this job's (its ``mljob.io/job-name``
   label and uid). Verdicts are kept for a minute by the token's hash: a job reporting ten times a second costs
   one review a minute per pod. Reviews of tokens not seen lately are limited for all jobs together (429);
2. a rate per pod (429 with ``Retry-After``), counted for its own token only: nobody else can use it up;
3. the size (413, Trainer's 64 KiB) and the payload (422 with the field path); a finished job takes no more
   reports (409).

Good reports are folded in memory and coalesced (:class:`~mljob.core.progress.Coalescer`): one status merge patch
per job per interval, however many reports come.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mljob.api import API_VERSION, PLURAL, parse_time
from mljob.core import progress
from mljob.core.kinds import MLJOB
from mljob.core.names import LABEL_JOB
from mljob.kube import Api, ApiError
from mljob.operator.controller import finished

logger = logging.getLogger("mljob.operator.progress")

Key = tuple[str, str]
DEFAULT_PORT = 9445
RATE = 20.0
"""Reports a second one pod may send, on average (a burst of twice that is taken): the SDK helper sends one per
five seconds and mljob's one a second, so only a runaway loop meets it."""
REVIEWS = 50.0
"""TokenReviews a second for tokens not seen lately, all jobs together (a burst of twice that): a new pod costs one
a minute; a flood of made-up tokens is answered 429 rather than passed on to the API server."""
TOKEN_TTL = 60.0
"""Seconds a token's verdict is kept; never beyond the token's own expiry."""
REFUSED_TTL = 10.0
"""Seconds a refused token stays refused without asking the API server again."""
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"


def refuse(code: int, message: str, headers: Mapping[str, str] | None = None) -> aiohttp.web.Response:
    """A refusal as a Kubernetes ``Status`` (:func:`~mljob.core.progress.failure`), as Trainer's server answers."""
    return aiohttp.web.json_response(progress.failure(code, message), status=code, headers=headers)


@dataclass
class Verdict:
    """What a token's review said for one job: ``code`` 0 is allowed, for the reports of ``pod``."""

    code: int
    message: str
    until: float
    pod: str = ""


def token_expiry(token: str) -> float | None:
    """The token's ``exp`` claim (seconds since the epoch), read without checking: the review checked it."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


@dataclass
class ProgressServer:
    """The endpoint and its writer. ``lookup`` gives the job as the operator's watch last saw it (None when not
    known here: a passive replica's index may be empty), ``clock`` monotonic seconds for rates and intervals."""

    api: Api
    lookup: Callable[[Key], Mapping[str, Any] | None] = lambda key: None
    interval: float = progress.INTERVAL
    rate: float = RATE
    clock: Callable[[], float] = time.monotonic
    states: dict[Key, progress.Progress] = field(default_factory=dict)
    coalescer: progress.Coalescer = field(init=False)
    buckets: dict[tuple[Key, str], progress.TokenBucket] = field(default_factory=dict)
    reviews: progress.TokenBucket = field(default_factory=lambda: progress.TokenBucket(REVIEWS, 2 * REVIEWS))
    verdicts: dict[tuple[str, Key], Verdict] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Requests by answer code, and ``patches`` (the bench reads these)."""
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: aiohttp.web.AppRunner | None = None
    _writer: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.coalescer = progress.Coalescer(self.interval)

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application(client_max_size=progress.MAX_BODY)
        app.router.add_route("*", f"/apis/{API_VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}/status", self.handle)
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    async def start(self, port: int, cert: bytes | None, key: bytes | None, addr: str = "0.0.0.0") -> None:
        """Serve on ``addr:port`` (HTTPS when given a key pair) and start the writer."""
        context = None
        if cert is not None and key is not None:
            from mljob.operator.webhook import write_key_pair

            certfile, keyfile = write_key_pair(cert, key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
        self._runner = aiohttp.web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, addr, port, ssl_context=context).start()
        self._writer = asyncio.create_task(self.write_forever(), name="mljob-progress-writer")

    async def stop(self) -> None:
        """Write what is pending, then stop serving."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for key in list(self.coalescer.pending):
            await self._write(key)
        if self._runner is not None:
            await self._runner.cleanup()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def unknown(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self._count("404")
        return refuse(404, f"no progress endpoint at {request.path}")

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        response = await self._handle(request)
        self._count(str(response.status))
        return response

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.method != "POST":
            return refuse(405, "progress is reported with POST")
        key = (request.match_info["namespace"], request.match_info["name"])
        now = self.clock()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token.strip():
            return refuse(401, "a bearer token bound to one of the job's pods is required")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        verdict = self.verdicts.get((digest, key))
        if verdict is None or verdict.until <= now:
            # A token not seen lately costs a TokenReview: those are limited for all jobs together, so a flood of
            # made-up tokens costs the API server little and never uses up a job's own allowance.
            wait = self.reviews.take(now)
            if wait:
                return self._too_many(wait, "reviews of new tokens")
            verdict = await self.authorize(token.strip(), digest, key, now)
        if verdict.code:
            return refuse(verdict.code, verdict.message)
        bucket = self.buckets.setdefault((key, verdict.pod), progress.TokenBucket(self.rate, 2 * self.rate))
        wait = bucket.take(now)
        if wait:  # per pod: a job whose every rank reports is not throttled for its size
            return self._too_many(wait, f"{self.rate:g} reports a second from pod {verdict.pod}")
        try:
            body = await request.read()
        except aiohttp.web.HTTPRequestEntityTooLarge:
            return refuse(413, f"a report is at most {progress.MAX_BODY} bytes")
        wall = datetime.now(UTC)
        try:
            report = progress.parse_report(body, wall)
        except progress.ReportError as error:
            return refuse(422, str(error))
        known = self.lookup(key)
        if known is not None and finished(known):
            self.forget(key)
            return refuse(409, f"mljobs/{key[1]} has finished: its progress is final")
        if not report.empty:
            state = self.states.get(key)
            if state is None:
                state = progress.from_status((known or {}).get("status"), wall)
            self.states[key] = progress.fold(state, report, wall)
            if self.coalescer.touch(key, now):
                self._wake.set()
        return aiohttp.web.json_response(report.wire())

    def _too_many(self, wait: float, what: str) -> aiohttp.web.Response:
        return refuse(429, f"more than {what}", {"Retry-After": str(max(1, round(wait)))})

    async def authorize(self, token: str, digest: str, key: Key, now: float) -> Verdict:
        """Whether ``token`` (its hash ``digest``) may report for job ``key``: a TokenReview and the pod; the verdict
        is kept by the hash, which the handler looks up first."""
        verdict = await self._review(token, key, now)
        if len(self.verdicts) > 10_000:  # a flood of distinct tokens: start over rather than grow
            self.verdicts.clear()
        self.verdicts[(digest, key)] = verdict
        return verdict

    async def _review(self, token: str, key: Key, now: float) -> Verdict:
        namespace, name = key
        refused = now + REFUSED_TTL
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [progress.audience(namespace, name)]},
        }
        try:
            answer = await self.api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)
        except ApiError as error:
            logger.warning("progress: TokenReview failed: %s", error)
            return Verdict(503, "the token could not be reviewed now; report again later", now + 1)
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            why = status.get("error") or "not valid"
            return Verdict(403, f"the token is not valid for mljobs/{name} in {namespace} ({why})", refused)
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        if not str(user.get("username", "")).startswith(f"system:serviceaccount:{namespace}:"):
            return Verdict(403, f"the token is not a service account's of namespace {namespace}", refused)
        pod_name = (extra.get(POD_NAME) or [None])[0]
        pod_uid = (extra.get(POD_UID) or [None])[0]
        if not pod_name:
            return Verdict(403, "the token is not bound to a pod", refused)
        try:
            pod = await self.api.get("Pod", namespace, pod_name)
        except ApiError as error:
            logger.warning("progress: could not read pod %s/%s: %s", namespace, pod_name, error)
            return Verdict(503, "the token's pod could not be read now; report again later", now + 1)
        meta = (pod or {}).get("metadata") or {}
        if pod is None or meta.get("uid") != pod_uid or (meta.get("labels") or {}).get(LABEL_JOB) != name:
            return Verdict(403, f"pod {pod_name} is not a replica of mljobs/{name}", refused)
        until = now + TOKEN_TTL
        expiry = token_expiry(token)
        if expiry is not None:
            until = min(until, now + max(0.0, expiry - time.time()))
        return Verdict(0, "", until, str(pod_name))

    def forget(self, key: Key) -> None:
        """A job finished or gone: its state, pending write and series go."""
        self.states.pop(key, None)
        self.coalescer.forget(key)
        for bucket in [b for b in self.buckets if b[0] == key]:
            del self.buckets[bucket]

    async def write_forever(self) -> None:
        """Write each job's progress when it falls due: at most one patch per job per interval."""
        while True:
            at = self.coalescer.next_at()
            timeout = None if at is None else max(0.0, at - self.clock())
            self._wake.clear()
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            for key in self.coalescer.due(self.clock()):
                try:
                    await self._write(key)
                except Exception:  # one job's write never stops the others'
                    logger.exception("progress: writing %s/%s failed", *key)

    async def _write(self, key: Key) -> None:
        """Patch the job's progress fields, unless the job holds newer ones: every replica takes reports (the
        Service spreads a pod's reports over them), so another replica may have written a later report first.
        The read job's resourceVersion is the patch's precondition; a conflict is tried again next interval."""
        state = self.states.get(key)
        if state is None:
            return
        known = self.lookup(key)
        if known is not None and finished(known):
            self.forget(key)  # the reconciler ended its progress; a late write must not undo that
            return
        try:
            current = await self.api.request("GET", f"/apis/{API_VERSION}/namespaces/{key[0]}/{PLURAL}/{key[1]}")
        except ApiError as error:
            if error.status == 404:
                self.forget(key)
                return
            raise
        if finished(current):
            self.forget(key)
            return
        if newer((current.get("status") or {}).get("trainerStatus"), state):
            return  # another replica wrote a later report; ours is dropped (its next one may be newer)
        fields = state.to_status()
        trainer = fields["trainerStatus"]
        for name in ("progressPercentage", "estimatedRemainingSeconds", "metrics", "step", "totalSteps"):
            trainer.setdefault(name, None)  # a merge patch keeps what it does not name: null clears
        self._count("patches")
        rv = (current.get("metadata") or {}).get("resourceVersion")
        try:
            await self.api.patch_job(key[0], key[1], rv, {"status": fields}, status=True, kind=MLJOB)
        except ApiError as error:
            if error.status == 404:
                self.forget(key)
                return
            if error.status == 409:  # the job moved since the read: the next interval writes
                self.coalescer.touch(key, self.clock())
                self._wake.set()
                return
            raise

    def series(self) -> Iterator[tuple[Key, progress.Progress]]:
        """The jobs with progress in memory: running jobs that reported to this replica."""
        yield from list(self.states.items())


def newer(written: Any, state: progress.Progress) -> bool:
    """Whether the job's ``trainerStatus`` is from a later report than ``state`` (by report time, to the second as
    written, then by step): then ``state`` must not overwrite it."""
    if not isinstance(written, Mapping) or state.updated is None:
        return False
    when = parse_time(written.get("lastUpdatedTime"))
    if when is None:
        return False
    ours = state.updated.replace(microsecond=0)
    if when != ours:
        return when > ours
    step = written.get("step")
    return isinstance(step, int) and state.step is not None and step > state.step


class ProgressCollector(Collector):
    """Per-job gauges, computed at scrape time from the jobs that report to this replica: a job's series exist
    while it runs and go when it finishes, so their number is bounded by the running jobs."""

    def __init__(self, server: ProgressServer) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = dict(self.server.counts)
        reports = CounterMetricFamily(
            "mljob_progress_reports", "Progress reports this replica answered, by HTTP code.", labels=["code"]
        )
        for code, n in sorted(counts.items()):
            if code.isdigit():
                reports.add_metric([code], n)
        yield reports
        yield CounterMetricFamily(
            "mljob_progress_patches", "Status patches that wrote reported progress.", value=counts.get("patches", 0)
        )
        labels = ["namespace", "name"]
        percent = GaugeMetricFamily(
            "mljob_job_progress_percent", "A running job's reported progress, 0-100.", labels=labels
        )
        eta = GaugeMetricFamily("mljob_job_eta_seconds", "A running job's estimated training time left.", labels=labels)
        step = GaugeMetricFamily("mljob_job_step", "A running job's latest reported step.", labels=labels)
        last = GaugeMetricFamily(
            "mljob_job_progress_last_report_timestamp_seconds",
            "When a running job last reported progress: alert when it stops moving.",
            labels=labels,
        )
        metric = GaugeMetricFamily(
            "mljob_job_metric", "A running job's latest numeric metrics (loss...).", labels=[*labels, "metric"]
        )
        for (namespace, name), state in self.server.series():
            if state.percent is not None:
                percent.add_metric([namespace, name], state.percent)
            if state.eta_seconds is not None:
                eta.add_metric([namespace, name], state.eta_seconds)
            if state.step is not None:
                step.add_metric([namespace, name], state.step)
            if state.updated is not None:
                last.add_metric([namespace, name], state.updated.timestamp())
            for curve in state.curves:  # the numeric metrics with a curve: at most HISTORY_METRICS a job
                value = dict(state.metrics).get(curve.name)
                number = progress.number(value) if value is not None else None
                if number is not None:
                    metric.add_metric([namespace, name, curve.name], number)
        yield from (percent, eta, step, last, metric)
