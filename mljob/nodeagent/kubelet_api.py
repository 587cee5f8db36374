"""The kubelet's HTTPS API, the part the API server proxies ``kubectl logs`` to: ``/containerLogs``.

The API server reaches a node's kubelet at its InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``, checks
the serving certificate against ``--kubelet-certificate-authority`` and presents its ``--kubelet-client-*``
certificate. So this server serves a certificate from the cluster's CA and, given ``client_ca``, accepts only
clients with a certificate from it (a kubelet would also ask the API server whether that client may; here the
API server is the only client that holds one). Query parameters are the kubelet's: ``follow``, ``previous``,
``timestamps``, ``tailLines``, ``sinceSeconds``/``sinceTime``, ``limitBytes``. Exec, attach and port-forward
answer 501 with a message saying the agent does not do them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from mljob.nodeagent.logs import Entry, Options, parse, render, select

log = logging.getLogger("mljob.nodeagent")
FOLLOW_POLL = 0.1
"""Seconds between looks at a followed log file for new lines."""


@dataclass(frozen=True)
class LogFile:
    """A container run's log file, and whether that run may still write to it."""

    path: Path
    live: Callable[[], bool]


class NoLog(Exception):
    """No such pod, container or previous run; the message is the kubelet's kind of answer."""


class LogSource(Protocol):
    def log_file(self, namespace: str, pod: str, container: str, previous: bool) -> LogFile: ...


def options(query: dict[str, str]) -> Options:
    """The kubelet's log options from a query string; ValueError for an unreadable value."""
    since = None
    if query.get("sinceSeconds"):
        since = datetime.now(UTC) - timedelta(seconds=int(query["sinceSeconds"]))
    elif query.get("sinceTime"):
        since = datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
    tail = int(query["tailLines"]) if query.get("tailLines") else None
    limit = int(query["limitBytes"]) if query.get("limitBytes") else None
    return Options(query.get("timestamps") in ("1", "true"), tail, since, limit)


async def container_logs(request: web.Request) -> web.StreamResponse:
    source: LogSource = request.app[SOURCE]
    query = dict(request.query)
    try:
        wanted = options(query)
    except ValueError as error:
        return web.Response(status=400, text=f"bad log options: {error}")
    previous = query.get("previous") in ("1", "true")
    try:
        found = source.log_file(
            request.match_info["namespace"], request.match_info["pod"], request.match_info["container"], previous
        )
    except NoLog as error:
        return web.Response(status=400, text=str(error))  # the kubelet's code: the API server shows the text
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    left = wanted.limit_bytes

    async def send(entries: list[Entry], line_start: bool) -> bool:
        nonlocal left
        data = render(entries, wanted, line_start=line_start)
        if left is not None:
            data, left = data[:left], left - min(left, len(data))
        if data:
            await response.write(data)
        return left is None or left > 0

    data = found.path.read_bytes() if found.path.exists() else b""
    cut = data.rfind(b"\n") + 1
    entries = select(parse(data[:cut]), wanted)
    more = await send(entries, True)
    follow = query.get("follow") in ("1", "true") and not previous
    if follow and more:
        await _follow(found, cut, wanted, send)
    await response.write_eof()
    return response


async def _follow(found: LogFile, offset: int, wanted: Options, send: Callable[[list[Entry], bool], Any]) -> None:
    """Send lines as they are appended, until the run has ended and its last line is sent."""
    rest = b""
    line_start = True
    with found.path.open("rb") as f:
        f.seek(offset)
        while True:
            alive = found.live()
            chunk = f.read()
            if chunk:
                rest += chunk
                cut = rest.rfind(b"\n") + 1
                entries = select(parse(rest[:cut]), Options(since=wanted.since))
                rest = rest[cut:]
                if not await send(entries, line_start):
                    return
                line_start = entries[-1].full if entries else line_start
            elif not alive:
                return
            else:
                await asyncio.sleep(FOLLOW_POLL)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def unsupported(request: web.Request) -> web.Response:
    return web.Response(
        status=501,
        text=f"{request.path.split('/')[1] or '/'}: not supported by the mljob node agent (it serves container logs)",
    )


SOURCE = web.AppKey("source", LogSource)


def app(source: LogSource) -> web.Application:
    application = web.Application()
    application[SOURCE] = source
    application.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    application.router.add_get("/healthz", healthz)
    application.router.add_route("*", "/{tail:.*}", unsupported)
    return application


def tls(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The serving context: our pair; client certificates from ``client_ca`` required when one is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(source: LogSource, host: str, port: int, context: ssl.SSLContext | None) -> web.AppRunner:
    """Start the server; the caller keeps the runner and cleans it up."""
    runner = web.AppRunner(app(source), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    log.info("kubelet API on %s://%s:%d", "https" if context else "http", host, port)
    return runner
