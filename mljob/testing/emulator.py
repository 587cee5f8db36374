"""An in-memory Kubernetes API server that a real kopf operator can talk to over plain HTTP.

Tests need the operator's whole API conversation (discovery, list+watch, merge and JSON patches,
``/status``, events) to behave like a cluster, quickly and deterministically, without a cluster.
The HTTP layer here only parses requests, applies faults and accounting, and streams watches;
the API semantics live in :mod:`mljob.testing.store`.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from mljob.testing import resources as res
from mljob.testing.errors import ApiError, bad_request, status_body
from mljob.testing.faults import Faults, RequestStats
from mljob.testing.patching import deep_copy
from mljob.testing.selectors import SelectorError, compile_selectors
from mljob.testing.store import Store
from mljob.testing.watch import Body, Watcher

logger = logging.getLogger(__name__)

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}
VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-mljob-emulator",
    "gitCommit": "emulator",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode(value), status=status, content_type="application/json", headers=headers)


def _error(e: ApiError) -> web.Response:
    return _json(e.status(), e.code, e.headers or None)


def write_kubeconfig(path: str | Path, server: str, namespace: str = "default") -> Path:
    """A kubeconfig with no auth, accepted by kopf, the kubernetes client and kubectl via KUBECONFIG.

    Written as JSON, which every YAML loader reads, so no YAML dependency is needed.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "emulator", "user": {"username": "emulator", "password": "emulator"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
        ],
        "current-context": "emulator",
        "preferences": {},
    }
    target = Path(path)
    target.write_text(json.dumps(config, indent=2))
    return target


class _Route:
    """What a URL addresses: a discovery document or a resource (collection, object, subresource)."""

    __slots__ = ("doc", "info", "name", "namespace", "subresource", "version")

    def __init__(
        self,
        *,
        doc: Any = None,
        info: res.ResourceInfo | None = None,
        version: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> None:
        self.doc, self.info, self.version = doc, info, version
        self.namespace, self.name, self.subresource = namespace, name, subresource


class KubeEmulator:
    """The API server: start it with ``async with KubeEmulator() as emu:`` inside the test's loop.

    ``emu.store`` is the state (also reachable through the shortcut methods below),
    ``emu.faults`` injects errors, latency and watch cuts, ``emu.stats`` counts requests.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store: Store | None = None,
        history_limit: int = 10_000,
        bookmark_interval: float = 30.0,
        watch_timeout: float | None = None,
        seed: int | None = 0,
        namespaces: tuple[str, ...] = ("default", "kube-system"),
        auto_create_namespaces: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.store = store or Store(
            history_limit=history_limit, namespaces=namespaces, auto_create_namespaces=auto_create_namespaces
        )
        self.faults = Faults(seed)
        self.stats = RequestStats()
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self._runner: web.ServerRunner | None = None
        self._watches: dict[Watcher, web.BaseRequest] = {}
        self._cutter: asyncio.Task[None] | None = None
        self._discovery: dict[str, Any] = {}
        self._discovery_generation = -1

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> KubeEmulator:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self

    async def stop(self) -> None:
        self.cut_watches_every(None)
        self.cut_watches(abort=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeEmulator:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server; pass it to a subprocess as ``KUBECONFIG``."""
        return write_kubeconfig(path, self.url, namespace)

    # --- shortcuts to the store (see Store for the semantics); they return private copies ----------

    def get(self, resource: str, name: str, namespace: str | None = "default") -> Body | None:
        return self.store.get(resource, name, namespace)

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Body]:
        return self.store.list(resource, namespace, label_selector=label_selector, field_selector=field_selector)

    def create(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        return deep_copy(self.store.create(resource, body, namespace))  # type: ignore[no-any-return]

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = "default",
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Body:
        return deep_copy(  # type: ignore[no-any-return]
            self.store.patch(resource, name, patch, namespace, patch_type=patch_type, subresource=subresource)
        )

    def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = "default",
        *,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> Body:
        obj, _ = self.store.delete(
            resource, name, namespace, propagation_policy=propagation_policy, grace_period_seconds=grace_period_seconds
        )
        return deep_copy(obj)  # type: ignore[no-any-return]

    def events_for(
        self, name: str | None = None, *, reason: str | None = None, namespace: str | None = None
    ) -> builtins.list[Body]:
        return self.store.events_for(name, reason=reason, namespace=namespace)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        return await self.store.wait_for(predicate, timeout)

    # --- watch control -----------------------------------------------------------------------------

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def cut_watches(self, *, abort: bool = True) -> int:
        """End every open watch stream: ``abort`` drops the TCP connection, else ends it cleanly."""
        watchers = list(self._watches)
        for watcher in watchers:
            watcher.close(abort=abort)
        return len(watchers)

    def cut_watches_every(self, interval: float | None, *, abort: bool = True) -> None:
        """Cut all watch streams periodically (None stops it), as flaky load balancers do."""
        if self._cutter is not None:
            self._cutter.cancel()
            self._cutter = None
        self.faults.watch_cut_interval = interval
        if interval is not None:

            async def cutter() -> None:
                while True:
                    await asyncio.sleep(interval)
                    self.cut_watches(abort=abort)

            self._cutter = asyncio.get_running_loop().create_task(cutter())

    # --- HTTP --------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        verb, label = "discovery", request.path
        name: str | None = None
        try:
            route = self._route(request.path)
            if route.info is not None:
                verb = self._verb(request.method, route, request.query)
                label = route.info.label + (f"/{route.subresource}" if route.subresource else "")
                name = route.name
            delay = self.faults.delay_for(verb)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self.faults.check(verb, label, name)
            except ApiError:
                self.stats.injected += 1
                raise
            if route.info is None:
                if request.method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
                response: web.StreamResponse = _json(route.doc)
            elif verb == "watch":
                self.stats.record(request.method, request.path, verb, label, 200)
                return await self._watch(request, route)
            else:
                response = await self._dispatch(request, verb, route)
        except ApiError as e:
            response = _error(e)
        except Exception as e:  # a bug here must reach the test as a 500, not hang the client
            logger.exception("emulator failure on %s %s", request.method, request.path)
            response = _error(ApiError(500, "InternalError", f"emulator failure: {e!r}"))
        self.stats.record(request.method, request.path, verb, label, response.status)
        return response

    def _discovery_doc(self, key: str) -> Any:
        if self._discovery_generation != self.store.discovery_generation:
            self._discovery = self._build_discovery()
            self._discovery_generation = self.store.discovery_generation
        return self._discovery.get(key)

    def _build_discovery(self) -> dict[str, Any]:
        by_gv: dict[tuple[str, str], list[res.ResourceInfo]] = {}
        group_versions: dict[str, list[str]] = {}
        for group, version, info in self.store.served():
            by_gv.setdefault((group, version), []).append(info)
            if group:
                group_versions.setdefault(group, [])
                if version not in group_versions[group]:
                    group_versions[group].append(version)
        docs: dict[str, Any] = {
            "/version": VERSION_INFO,
            "/api": {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            },
        }
        groups = []
        for group, versions in sorted(group_versions.items()):
            doc = res.api_group(group, versions)
            docs[f"/apis/{group}"] = doc
            groups.append({k: v for k, v in doc.items() if k not in ("kind", "apiVersion")})
        docs["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for (group, version), infos in by_gv.items():
            gv = f"{group}/{version}" if group else version
            docs[f"/apis/{gv}" if group else f"/api/{gv}"] = res.resource_list(gv, infos)
        return docs

    def _route(self, path: str) -> _Route:
        segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
        key = "/" + "/".join(segments)
        doc = self._discovery_doc(key)
        if doc is not None:
            return _Route(doc=doc)
        if len(segments) >= 3 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 4 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            info = self.store.lookup(group, version, rest[2])
            if info is not None or not (group == "" and len(rest) == 3):
                namespace, rest = rest[1], rest[2:]
        info = self.store.lookup(group, version, rest[0])
        if info is None or len(rest) > 3 or (namespace is not None and not info.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and subresource not in info.subresources:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({info.label}/{subresource})"
            )
        return _Route(
            info=info,
            version=version,
            namespace=namespace,
            name=rest[1] if len(rest) >= 2 else None,
            subresource=subresource,
        )

    @staticmethod
    def _verb(method: str, route: _Route, query: Any) -> str:
        if route.name is None:
            if method == "GET":
                return "watch" if query.get("watch") in ("true", "1") else "list"
            return {"POST": "create", "DELETE": "deletecollection"}.get(method, method.lower())
        if route.subresource == "eviction" and method == "POST":
            return "create"
        return {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())

    async def _body(self, request: web.BaseRequest, *, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw:
            if optional:
                return None
            raise bad_request("the request body is empty")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"the request body is not valid JSON: {e}") from None

    async def _dispatch(self, request: web.BaseRequest, verb: str, route: _Route) -> web.StreamResponse:
        info, store = route.info, self.store
        assert info is not None
        if info.namespaced and route.namespace is None and verb not in ("list", "watch"):
            raise ApiError(405, "MethodNotAllowed", f"{verb} on {info.label} needs a namespace in the URL")
        name = route.name or ""
        if verb == "get":
            if route.subresource == "log":
                store.read(info, name, route.namespace)
                return web.Response(text="", content_type="text/plain")
            return _json(self._versioned(store.read(info, name, route.namespace), info, route.version))
        if verb == "list":
            return self._list(request, route)
        if verb == "create" and route.subresource == "eviction":
            store.delete(info, name, route.namespace)
            return _json(status_body(201, "", "", success=True), 201)
        if verb == "create":
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("the body must be an object")
            created = store.create(info, body, route.namespace, keep_status=False)
            return _json(self._versioned(created, info, route.version), 201)
        if verb == "update":
            body = await self._body(request)
            obj = store.replace(info, name, body, route.namespace, subresource=route.subresource)
            return _json(self._versioned(obj, info, route.version))
        if verb == "patch":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            patch_type = _PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType", f"the media type {content_type!r} is not supported")
            obj = store.patch(
                info,
                name,
                await self._body(request),
                route.namespace,
                patch_type=patch_type,
                subresource=route.subresource,
            )
            return _json(self._versioned(obj, info, route.version))
        if verb == "delete":
            options = await self._body(request, optional=True) or {}
            query = request.query
            policy = query.get("propagationPolicy") or options.get("propagationPolicy")
            if policy is None and (query.get("orphanDependents") == "true" or options.get("orphanDependents")):
                policy = "Orphan"
            grace_raw = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
            try:
                grace = int(grace_raw) if grace_raw is not None else None
            except ValueError:
                raise bad_request(f"invalid gracePeriodSeconds {grace_raw!r}") from None
            obj, gone = store.delete(
                info,
                name,
                route.namespace,
                propagation_policy=policy,
                grace_period_seconds=grace,
                preconditions=options.get("preconditions"),
            )
            if gone and info.key != ("", "pods"):
                md = obj["metadata"]
                return _json(
                    status_body(
                        200,
                        "",
                        "",
                        {"name": md["name"], "group": info.group, "kind": info.plural, "uid": md["uid"]},
                        success=True,
                    )
                )
            return _json(self._versioned(obj, info, route.version))
        if verb == "deletecollection":
            matcher = self._matcher(request.query)
            for obj in list(store.iter_objects(info, route.namespace, matcher)):
                md = obj["metadata"]
                with contextlib.suppress(ApiError):
                    store.delete(info, md["name"], md.get("namespace"))
            return _json(status_body(200, "", "", success=True))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")

    @staticmethod
    def _versioned(obj: Body, info: res.ResourceInfo, version: str) -> Body:
        """Objects are stored once; a request via another served version sees its apiVersion."""
        if version == info.storage_version:
            return obj
        return {**obj, "apiVersion": info.api_version_for(version)}

    @staticmethod
    def _matcher(query: Any) -> Any:
        try:
            return compile_selectors(query.get("labelSelector"), query.get("fieldSelector"))
        except SelectorError as e:
            raise bad_request(str(e)) from None

    def _list(self, request: web.BaseRequest, route: _Route) -> web.Response:
        info = route.info
        assert info is not None
        query = request.query
        matcher = self._matcher(query)
        items = self.store.iter_objects(info, route.namespace, matcher)
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                after, metadata["resourceVersion"] = tuple(state["after"]), state["rv"]
            except (ValueError, KeyError, TypeError):
                raise bad_request("invalid continue token") from None
            items = (o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after)
        chunk: list[Body] = []
        for obj in items:
            if limit and len(chunk) == limit:
                last = chunk[-1]["metadata"]
                state = {"after": [last.get("namespace", ""), last["name"]], "rv": metadata["resourceVersion"]}
                metadata["continue"] = base64.urlsafe_b64encode(encode(state)).decode()
                break
            chunk.append(obj)
        api_version = info.api_version_for(route.version)
        head = encode({"kind": f"{info.kind}List", "apiVersion": api_version, "metadata": metadata})
        strip = route.version == info.storage_version
        body = (
            head[:-1]
            + b',"items":['
            + b",".join(encode(obj if strip else {**obj, "apiVersion": api_version}) for obj in chunk)
            + b"]}"
        )
        return web.Response(body=body, content_type="application/json")

    async def _watch(self, request: web.BaseRequest, route: _Route) -> web.StreamResponse:
        info = route.info
        assert info is not None
        query = request.query
        matcher = self._matcher(query)
        raw_rv = query.get("resourceVersion") or ""
        send_initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout_raw = query.get("timeoutSeconds")
        timeout = float(timeout_raw) if timeout_raw else self.watch_timeout
        since: int | None = None
        if not send_initial and raw_rv not in ("", "0"):
            try:
                since = int(raw_rv)
            except ValueError:
                return _error(bad_request(f"invalid resourceVersion {raw_rv!r}"))
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(info, route.namespace, matcher, since=since, initial=since is None)
        except ApiError as e:  # 410 Gone goes in-stream, as the real API sends it and kopf expects it
            await response.prepare(request)
            await response.write(encode({"type": "ERROR", "object": e.status()}) + b"\n")
            await response.write_eof()
            return response
        self._watches[watcher] = request
        self.store.notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            await response.prepare(request)
            if send_initial:
                if not await self._drain(response, watcher, None):
                    return response
                if bookmarks:
                    await self._bookmark(response, info, initial_end=True)
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                wake = next_bookmark if deadline is None else min(deadline, next_bookmark)
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), max(0.0, wake - loop.time()))
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if bookmarks:
                        await self._bookmark(response, info)
                    next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if item is None or not await self._drain(response, watcher, item):
                    if watcher.abort and request.transport is not None:
                        request.transport.abort()
                        return response
                    break
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away; nothing to tell it
        finally:
            self.store.unwatch(watcher)
            self._watches.pop(watcher, None)
            self.store.notify()
        return response

    async def _drain(self, response: web.StreamResponse, watcher: Watcher, first: Any) -> bool:
        """Write ``first`` and everything already queued, in one chunk; False once told to close."""
        items = [first] if first is not None else []
        keep_going = True
        while not watcher.queue.empty():
            item = watcher.queue.get_nowait()
            if item is None:
                keep_going = False
                break
            items.append(item)
        if items:
            self.stats.watch_events += len(items)
            await response.write(b"".join(change.line(event_type, encode) for event_type, change in items))
        return keep_going

    async def _bookmark(
        self, response: web.StreamResponse, info: res.ResourceInfo, *, initial_end: bool = False
    ) -> None:
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        self.stats.bookmarks += 1
        obj = {"kind": info.kind, "apiVersion": info.api_version, "metadata": metadata}
        await response.write(encode({"type": "BOOKMARK", "object": obj}) + b"\n")


def monotonic() -> float:
    """The clock of ``RequestStats`` records, for ``emu.stats.since(moment)``."""
    return time.monotonic()
