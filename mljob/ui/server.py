"""The UI's edge: two watches (MLJobs, and the pods that carry the job label), the pages, and a live stream.

One list and then a watch per kind keeps an in-memory copy of every job and its pods, as an informer does; a page
is rendered from that copy, so opening it costs the API server nothing but the job page's Events and log tails.
Every change is told to the open pages over Server-Sent Events; their few lines of JavaScript fetch the changed
part of the page again. The UI only reads (get, list, watch; pods/log): it has no route that writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jinja2
from aiohttp import web
from markupsafe import Markup

from mljob import kube
from mljob.api import GROUP, PLURAL, VERSION
from mljob.core.names import LABEL_JOB, Key
from mljob.kube import Credentials
from mljob.plugins import Plugins, load_plugins
from mljob.ui import view

log = logging.getLogger("mljob.ui")
HERE = Path(__file__).parent
LOG_TAIL_LINES = 20
LOG_TAIL_PODS = 16
"""A job page shows the log tail of at most this many replicas: one request each."""

KIND_JOBS, KIND_PODS = "mljobs", "pods"


COMPONENT = "mljob-ui"


class ApiFailure(Exception):
    """The API server refused or could not be reached; the message is the server's own."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Api:
    """The UI's reads with the kubeconfig's (or the pod's) credentials: single reads (a log is text) here, lists
    and watches through :class:`mljob.kube.Api`, whose list-then-watch loop the operator uses too."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self.kube = kube.Api(credentials, component=COMPONENT)
        """Lists and watches, through the operator's own loop (:func:`mljob.kube.inform`)."""

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": kube.user_agent(COMPONENT)}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.kube.close()

    def _headers(self) -> dict[str, str]:
        auth = self.credentials.authorization()
        return {"Authorization": auth} if auth else {}

    async def _fail(self, response: aiohttp.ClientResponse) -> ApiFailure:
        text = await response.text()
        try:
            message = str(json.loads(text).get("message") or text)
        except (ValueError, AttributeError):
            message = text.strip() or str(response.reason)
        return ApiFailure(response.status, message[:500])

    async def get(self, path: str, params: Mapping[str, str] | None = None, *, timeout: float = 30) -> Any:
        try:
            async with self.session().get(
                self.credentials.server + path,
                params=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status >= 400:
                    raise await self._fail(response)
                if response.content_type == "application/json":
                    return await response.json()
                return await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiFailure(0, f"{type(error).__name__}: {error}") from error


@dataclass
class Store:
    """The informers' copy of the cluster, the phase history, and the pages listening for changes."""

    namespace: str | None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    listeners: set[asyncio.Queue[str | None]] = field(default_factory=set)
    history: view.History = field(init=False)

    def __post_init__(self) -> None:
        self.history = view.History(since=self.started)

    def notify(self, key: str) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page catches up on its next full fetch
                listener.put_nowait(key)

    def _job_key(self, kind: str, obj: Mapping[str, Any]) -> str:
        namespace, name = view.key_of(obj)
        if kind == KIND_PODS:
            name = str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) or "")
        return f"{namespace}/{name}"

    def reset(self, kind: str, items: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        fresh = {view.key_of(item): item for item in items}
        if kind == KIND_JOBS:
            for key in set(self.jobs) - set(fresh):
                self.history.delete(key, now)
            for item in items:
                self.history.observe(item, now)
            self.jobs = fresh
        else:
            self.pods = fresh
        self.synced.add(kind)
        self.errors.pop(kind, None)
        self.notify("*")

    def apply(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        key = view.key_of(obj)
        table = self.jobs if kind == KIND_JOBS else self.pods
        if type_ == "DELETED":
            table.pop(key, None)
            if kind == KIND_JOBS:
                self.history.delete(key, now)
        else:
            table[key] = obj
            if kind == KIND_JOBS:
                self.history.observe(obj, now)
        self.notify(self._job_key(kind, obj))


def collection(kind: str, namespace: str | None) -> tuple[str, dict[str, str]]:
    """The REST path and query that list (and watch) one kind in the UI's scope."""
    where = f"/namespaces/{namespace}" if namespace else ""
    if kind == KIND_JOBS:
        return f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}", {}
    return f"/api/v1{where}/pods", {"labelSelector": LABEL_JOB}


async def inform(api: Api, store: Store, kind: str) -> None:
    """List, then watch from the list's version; list again on 410; back off, and say so, while the server is away."""
    path, params = collection(kind, store.namespace)

    def failed(error: kube.ApiError) -> None:
        store.errors[kind] = error.message or str(error)
        store.notify("*")

    async for event, payload in kube.inform(api.kube, path, params, what=kind, failed=failed):
        if event == kube.SYNC:
            store.reset(kind, list(payload))
        else:
            store.apply(kind, event, payload)


# --- pages ---------------------------------------------------------------------------------------------------

STORE = web.AppKey("store", Store)
API = web.AppKey("api", Api)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
PLUGINS = web.AppKey("plugins", Plugins)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["chart"] = view.metric_chart  # {{ curve | chart }}: the SVG is built, and escaped, in view.py
    return env


def render(request: web.Request, page: str, status: int = 200, **context: Any) -> web.Response:
    store = request.app[STORE]
    fragment = request.query.get("fragment") == "1"
    name = f"_{page}.html" if fragment else f"{page}.html"
    text = (
        request.app[TEMPLATES]
        .get_template(name)
        .render(
            scope=store.namespace or "all namespaces",
            errors=store.errors,
            synced=len(store.synced) == 2,
            **context,
        )
    )
    return web.Response(text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


async def jobs_page(request: web.Request) -> web.Response:
    store = request.app[STORE]
    now = datetime.now(UTC)
    only = request.query.get("namespace") or None
    jobs = {k: v for k, v in store.jobs.items() if only is None or k[0] == only}
    rows = view.job_rows(jobs, store.pods.values(), now)
    start = view.plot_window(store.history, now)
    series = store.history.series(start, now)
    counts = store.history.counts(now)
    return render(
        request,
        "jobs",
        base="./",
        rows=rows,
        only=only,
        counts=[(phase, counts.get(phase, 0), view.COLORS[phase]) for phase in view.PHASES],
        plot=Markup(view.phase_plot(series)),
        since=store.started,
    )


async def job_page(request: web.Request) -> web.Response:
    store = request.app[STORE]
    key = (request.match_info["namespace"], request.match_info["name"])
    job = store.jobs.get(key)
    if job is None:
        why = "the UI is still reading the cluster" if KIND_JOBS not in store.synced else "no such job"
        return render(request, "job", status=404, base="../../", key=key, job=None, why=why)
    now = datetime.now(UTC)
    pods = view.pods_of(key, store.pods.values())
    api = request.app[API]
    events_path = f"/api/v1/namespaces/{key[0]}/events"
    fetched = await asyncio.gather(
        api.get(events_path, {"limit": "500"}),
        *(tail(api, pod, job, request.app[PLUGINS]) for pod in pods[:LOG_TAIL_PODS]),
        return_exceptions=True,
    )
    listed, tails = fetched[0], fetched[1:]
    events_error = str(listed) if isinstance(listed, BaseException) else ""
    items = [] if isinstance(listed, BaseException) else list(listed.get("items") or [])
    names = [str((p.get("metadata") or {}).get("name")) for p in pods]
    status = job.get("status") or {}
    return render(
        request,
        "job",
        base="../../",
        key=key,
        job=job,
        row=view.job_row(job, pods, now),
        replicas=view.replicas(pods),
        conditions=status.get("conditions") or [],
        events=view.event_rows(items, key, names, now),
        events_error=events_error,
        logs=[
            (view.replica_name(pod), str(text), isinstance(text, BaseException))
            for pod, text in zip(pods, tails, strict=False)
        ],
        more_pods=max(0, len(pods) - LOG_TAIL_PODS),
    )


async def tail(api: Api, pod: Mapping[str, Any], job: Mapping[str, Any], plugins: Plugins) -> str:
    """The last lines of the replica's training container (the plugin's container, else the only one)."""
    meta = pod.get("metadata") or {}
    containers = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    framework = plugins.framework(str((job.get("spec") or {}).get("framework") or ""))
    wanted = framework.container_name if framework is not None else None
    container = wanted if wanted in containers else (containers[0] if containers else "")
    path = f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}/log"
    try:
        text = await api.get(path, {"container": container, "tailLines": str(LOG_TAIL_LINES), "limitBytes": "65536"})
    except ApiFailure as error:
        raise ApiFailure(error.status, f"no log: {error}") from None
    return str(text)


async def live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the key ("namespace/name", or "*" for everything) of each change, as it happens."""
    store = request.app[STORE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    changes: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
    store.listeners.add(changes)
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            try:
                key = await asyncio.wait_for(changes.get(), 15)
            except TimeoutError:
                await response.write(b": still here\n\n")
                continue
            if key is None:  # the server is stopping
                break
            await response.write(f"event: change\ndata: {json.dumps(key)}\n\n".encode())
    except ConnectionResetError:  # the page was closed
        pass
    finally:
        store.listeners.discard(changes)
    return response


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response({"synced": sorted(store.synced), "errors": store.errors})


def make_app(api: Api, store: Store, plugins: Plugins | None = None) -> web.Application:
    app = web.Application()
    app[STORE], app[API], app[TEMPLATES] = store, api, templates()
    app[PLUGINS] = plugins if plugins is not None else load_plugins()
    app.router.add_get("/", jobs_page)
    app.router.add_get("/jobs/{namespace}/{name}", job_page)
    app.router.add_get("/events", live)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", HERE / "static")
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        tasks.extend(asyncio.create_task(inform(api, store, kind)) for kind in (KIND_JOBS, KIND_PODS))

    async def stop(app: web.Application) -> None:
        for listener in list(store.listeners):
            listener.put_nowait(None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


async def serve(host: str, port: int, namespace: str | None, credentials: Credentials, ready: Any = print) -> None:
    """Serve until cancelled; ``ready`` is told the URL once the socket listens (port 0 picks a free one)."""
    app = make_app(Api(credentials), Store(namespace))
    runner = web.AppRunner(app, shutdown_timeout=2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = next((int(address[1]) for address in runner.addresses), port)  # (host, port, ...) per socket
    shown = f"[{host}]" if ":" in host else host
    ready(f"http://{shown}:{bound}/")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
