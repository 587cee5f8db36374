"""The kubelet's HTTPS API, the part the API server proxies to: ``/containerLogs``, ``/exec``, ``/portForward``.

The API server reaches a node's kubelet at its InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``, checks
the serving certificate against ``--kubelet-certificate-authority`` and presents its ``--kubelet-client-*``
certificate. So this server serves a certificate from the cluster's CA and, given ``client_ca``, accepts only
clients with a certificate from it, and asks the API server whether that client may, by SubjectAccessReview, as a
kubelet in webhook mode does (mljob.nodeagent.streaming). Log query parameters are the kubelet's: ``follow``,
``previous``, ``timestamps``, ``tailLines``, ``sinceSeconds``/``sinceTime``, ``limitBytes``. Exec and port-forward
are relayed to the kubelet's own streaming code (the ``kubelet-streaming`` helper); attach answers 501.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from mljob.nodeagent import streaming
from mljob.nodeagent.logs import Entry, Options, parse, render, select

log = logging.getLogger("mljob.nodeagent")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


class PodSource(LogSource, Protocol):
    """The agent's side of the API: log files, and the processes exec and port-forward enter (NoTarget if none)."""

    def exec_target(self, namespace: str, pod: str, uid: str, container: str) -> streaming.ExecTarget: ...

    def netns_of(self, namespace: str, pod: str, uid: str) -> str: ...

    def node_of(self, namespace: str, pod: str) -> str:
        """The Node the pod is on (the name a SubjectAccessReview asks about): one agent may play several."""
        ...


@dataclass(frozen=True)
class Streaming:
    """How exec and port-forward are served: the helper (None: not built), and the authorizer (None: no client
    certificates are asked for, so no client is known, and exec and port-forward are refused)."""

    helper: Path | None = None
    authorizer: streaming.Authorizer | None = None
    running: set[asyncio.subprocess.Process] = field(default_factory=set)
    """The helpers serving a request now: killed when the server shuts down (a port-forward never ends alone)."""


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


async def exec_(request: web.Request) -> web.StreamResponse:
    """``/exec/{namespace}/{pod}[/{uid}]/{container}?command=...&input=1&output=1&error=1&tty=1``."""
    source, streams = request.app[SOURCE], request.app[STREAMING]
    if streams.helper is None:
        return streaming.unavailable("exec")
    info = request.match_info
    namespace, pod, container, uid = info["namespace"], info["pod"], info["container"], info.get("uid", "")
    try:
        target = source.exec_target(namespace, pod, uid, container)
    except streaming.NoTarget as error:
        return web.Response(status=error.status, text=str(error))
    spec = streaming.exec_spec(target, f"{namespace}/{pod}", uid, container)
    return await streaming.relay(request, streams.helper, "exec", spec, streams.running)


async def port_forward(request: web.Request) -> web.StreamResponse:
    """``/portForward/{namespace}/{pod}[/{uid}]``: every port the client asks for, 127.0.0.1 in the pod's network."""
    source, streams = request.app[SOURCE], request.app[STREAMING]
    if streams.helper is None:
        return streaming.unavailable("portForward")
    info = request.match_info
    namespace, pod, uid = info["namespace"], info["pod"], info.get("uid", "")
    try:
        netns = source.netns_of(namespace, pod, uid)
    except streaming.NoTarget as error:
        return web.Response(status=error.status, text=str(error))
    spec = streaming.port_forward_spec(netns, f"{namespace}/{pod}", uid)
    return await streaming.relay(request, streams.helper, "port-forward", spec, streams.running)


@web.middleware
async def authorization(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The kubelet's filter: every path but /healthz, when clients are authenticated; exec and port-forward need
    authenticated clients (without --client-ca-file no client is known, and a shell is not given to anyone)."""
    streams = request.app[STREAMING]
    if request.path == "/healthz":
        return await handler(request)
    if streams.authorizer is None:
        if request.path.startswith(("/exec/", "/portForward/")):
            return web.Response(
                status=401,
                text="Unauthorized: exec and port-forward need authenticated clients (mljob node-agent "
                "--client-ca-file, the CA of the API server's --kubelet-client-certificate)",
            )
        return await handler(request)
    parts = request.path.strip("/").split("/")  # /{containerLogs,exec,portForward}/{namespace}/{pod}/...
    namespace, pod = (parts[1], parts[2]) if len(parts) > 2 else ("", "")
    node = request.app[SOURCE].node_of(namespace, pod)
    refused = await streaming.authorize(request, streams.authorizer, node)
    return refused if refused is not None else await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def unsupported(request: web.Request) -> web.Response:
    what = request.path.split("/")[1] or "/"
    hint = " (a container's output is in its log: kubectl logs -f)" if what == "attach" else ""
    return web.Response(
        status=501,
        text=f"{what}: not supported by the mljob node agent (it serves containerLogs, exec and portForward){hint}",
    )


async def stop_streams(application: web.Application) -> None:
    """On shutdown: end the streams (their helpers), so the server's wait for open requests is short."""
    for process in list(application[STREAMING].running):
        with contextlib.suppress(ProcessLookupError):
            process.kill()


SOURCE = web.AppKey("source", PodSource)
STREAMING = web.AppKey("streaming", Streaming)


def app(source: PodSource, streams: Streaming) -> web.Application:
    application = web.Application(middlewares=[authorization])
    application[SOURCE] = source
    application[STREAMING] = streams
    router = application.router
    router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    for method in ("GET", "POST"):  # POST from the API server's SPDY client, GET from a WebSocket one
        router.add_route(method, "/exec/{namespace}/{pod}/{container}", exec_)
        router.add_route(method, "/exec/{namespace}/{pod}/{uid}/{container}", exec_)
        router.add_route(method, "/portForward/{namespace}/{pod}", port_forward)
        router.add_route(method, "/portForward/{namespace}/{pod}/{uid}", port_forward)
    router.add_get("/healthz", healthz)
    router.add_route("*", "/{tail:.*}", unsupported)
    application.on_shutdown.append(stop_streams)
    return application


def tls(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The serving context: our pair; client certificates from ``client_ca`` required when one is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(
    source: PodSource, host: str, port: int, context: ssl.SSLContext | None, streams: Streaming
) -> web.AppRunner:
    """Start the server; the caller keeps the runner and cleans it up."""
    runner = web.AppRunner(app(source, streams), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    log.info("kubelet API on %s://%s:%d", "https" if context else "http", host, port)
    return runner
