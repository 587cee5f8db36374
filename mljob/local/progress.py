"""``mljob run``'s progress endpoint: the operator's, on loopback, for the run's life.

Replicas report exactly as in a cluster (:mod:`mljob.progress`, Trainer's SDK helper, HuggingFace's callback):
a POST of Trainer's ``{"trainerStatus": ...}`` to ``KUBEFLOW_TRAINER_SERVER_URL`` with the token read from the
file ``KUBEFLOW_TRAINER_SERVER_TOKEN`` names. Locally the URL is plain ``http://127.0.0.1:PORT`` + the job's
path (no TLS on loopback, so no ``KUBEFLOW_TRAINER_SERVER_CA_CERT``), and the token is a random one made for
this run, in a 0600 file in the run's own folder, which is removed when the run ends.

Answers are Kubernetes ``Status`` bodies with Trainer's codes and reasons, checked in this order, so the
cheap refusals come first and a flood costs no parsing:

- 404 ``NotFound``: a path that is not a job's status path.
- 405 ``MethodNotAllowed``: not a POST (``Allow: POST``).
- 401 ``Unauthorized``: no bearer token; 403 ``Forbidden``: a token that is not this run's (the operator's
  endpoint and Trainer's answer 403 to a token they do not take).
- 403 ``Forbidden``: this run's token on another job's path. Trainer binds a token to one job (its audience)
  and answers 403 on any other; locally only one job runs, so the token is right and the job is not.
- 429 ``TooManyRequests`` with ``Retry-After``: over :data:`RATE` reports a second (bursts of :data:`BURST`).
- 413 ``RequestEntityTooLarge``: a body over :data:`~mljob.core.progress.MAX_BODY`.
- 422 ``Invalid``: not JSON, or refused by :func:`~mljob.core.progress.parse_report` (the message names the
  field). The ``Content-Type`` is not checked, as Trainer's server does not (``curl -d`` sends a form's).
- 200: the report as parsed, folded into :attr:`ProgressServer.progress`.

Nothing a replica sends can stop or slow the run: every answer is computed here, never raised.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import hdrs, web

from mljob.core.progress import (
    ENV_CA_CERT,
    ENV_TOKEN,
    ENV_URL,
    MAX_BODY,
    Progress,
    ReportError,
    TokenBucket,
    failure,
    finished,
    fold,
    from_status,
    parse_report,
    path,
)

HOST = "127.0.0.1"
RATE = 50.0
"""Reports a second one job may send on average: far above any useful rate (the helper sends one a second)."""
BURST = 100
"""Reports one job may send at once: every rank of a big local job reporting together fits."""
TOKEN_FILE = "progress-token"
SHUTDOWN_SECONDS = 1.0
"""How long the end of the run waits for a report still being answered."""


def _path_pattern() -> re.Pattern[str]:
    """:func:`~mljob.core.progress.path` with its namespace and name as groups: one place says the path."""
    head, tail = path("{namespace}", "{name}").split("{namespace}")
    middle, end = tail.split("{name}")
    return re.compile(f"{re.escape(head)}([^/]+){re.escape(middle)}([^/]+){re.escape(end)}")


PATH = _path_pattern()


def final(progress: Progress, succeeded: bool, now: datetime) -> Progress:
    """The progress a finished run shows: the operator's rule (:func:`~mljob.core.progress.finished`), so a job
    that succeeded ends at 100% when it reported at all, and one that never reported still shows nothing."""
    status = progress.to_status()
    fields = finished(status, succeeded)
    if fields is None:
        return progress
    ended = from_status({**status, **fields}, now)
    return replace(ended, reports=progress.reports, anchor=progress.anchor, curves=progress.curves)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case, RFC 7235)."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ProgressServer:
    """The endpoint of one run. Made before the replicas are planned (its socket is bound, its token written, so
    their env is known), served in the run's event loop by :meth:`start`/:meth:`stop`; closed as a context
    manager, whether or not it ever served."""

    def __init__(
        self,
        namespace: str,
        name: str,
        folder: Path,
        *,
        rate: float = RATE,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = (namespace, name)
        self.clock = clock
        self.bucket = TokenBucket(rate, burst)
        self.progress = Progress()
        """The job's progress so far: replaced (never changed) by each report, so the status line's thread may
        read it at any time."""
        self.answered: Counter[int] = Counter()
        """How many requests got each status code."""
        self._started = clock()
        self._wall_start = datetime.now(UTC)
        self._token = secrets.token_urlsafe(32)
        self.token_file = folder / TOKEN_FILE
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(self._token)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.bind((HOST, 0))
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}{path(namespace, name)}"
        self._runner: web.AppRunner | None = None

    @property
    def env(self) -> dict[str, str]:
        """What every replica gets: Trainer's URL and token-path variables (no CA: plain http)."""
        return {ENV_URL: self.url, ENV_TOKEN: str(self.token_file)}

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the environment replicas inherit) with this run's variables: values inherited from an
        enclosing job (``mljob run`` inside a Trainer pod) are replaced, and its CA path dropped. A container's own
        ``env`` is applied on top of this, so a job that sets one of the names keeps its value."""
        env = {k: v for k, v in base.items() if k not in (ENV_URL, ENV_CA_CERT, ENV_TOKEN)}
        env.update(self.env)
        return env

    def now(self) -> datetime:
        """The wall clock as the run's monotonic clock moves it: an ETA is not bent by the clock being set."""
        return self._wall_start + timedelta(seconds=self.clock() - self._started)

    async def start(self) -> None:
        """Serve on the bound socket, in the running loop."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        self._runner = runner
        await web.SockSite(runner, self._socket).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def close(self) -> None:
        """Release the socket (served or not); the token file goes with the run's folder."""
        self._socket.close()

    def __enter__(self) -> ProgressServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            code, body, headers = await self._answer(request)
        except Exception as error:  # a bad request must never reach the run
            code, body, headers = 500, failure(500, f"internal error: {type(error).__name__}"), {}
        self.answered[code] += 1
        return web.json_response(body, status=code, headers=headers)

    async def _answer(self, request: web.Request) -> tuple[int, dict[str, Any], dict[str, str]]:
        found = PATH.fullmatch(request.path)
        if found is None:
            return 404, failure(404, f"not found: {request.path}"), {}
        if request.method != hdrs.METH_POST:
            return 405, failure(405, f"{request.method} is not allowed: POST a report"), {hdrs.ALLOW: "POST"}
        token = bearer(request.headers.get(hdrs.AUTHORIZATION))
        if token is None:
            return 401, failure(401, "Unauthorized: no bearer token"), {hdrs.WWW_AUTHENTICATE: "Bearer"}
        if not secrets.compare_digest(token.encode(), self._token.encode()):  # as the operator's and Trainer's
            return 403, failure(403, "Forbidden: the bearer token is not this run's"), {}
        if (found[1], found[2]) != self.job:
            mine = "/".join(self.job)
            message = f"Forbidden: this run's token is for job {mine}, not {found[1]}/{found[2]}"
            return 403, failure(403, message), {}
        wait = self.bucket.take(self.clock())
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            message = f"more than {self.bucket.rate:g} reports a second; retry after {seconds}s"
            return 429, failure(429, message, {"retryAfterSeconds": seconds}), {hdrs.RETRY_AFTER: str(seconds)}
        too_big = failure(413, f"a report is at most {MAX_BODY} bytes")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return 413, too_big, {}
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return 413, too_big, {}
        now = self.now()
        try:
            report = parse_report(raw, now)
        except ReportError as error:
            causes = [{"reason": "FieldValueInvalid", "field": error.field_path, "message": error.message}]
            return 422, failure(422, f"Invalid report: {error}", {"causes": causes}), {}
        self.progress = fold(self.progress, report, now)
        return 200, report.wire(), {}
