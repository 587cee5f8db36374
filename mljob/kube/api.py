"""The requests mljob makes of the Kubernetes API, over one async aiohttp session, and the REST paths they use.

Why aiohttp and not the official ``kubernetes`` client: the operator runs on kopf's asyncio loop (the node agent
and the web UI on their own), and the official client is synchronous (every call would block the loop or need a
thread); kopf itself talks to the API over aiohttp, and mljob needs a handful of verbs on a few kinds: create,
read and delete its children, merge-patch a job and its status, post events, list and watch.

Outcomes that mean "already done" are not errors: AlreadyExists on create, NotFound on delete,
and a failed uid precondition on delete (the name now belongs to a newer object). Everything
else raises :class:`ApiError`; the caller retries the whole pass later (conflicts included: the
next pass reads the newer object).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from mljob.api import GROUP, KIND, VERSION, format_time
from mljob.core.kinds import MLJOB, JobKind
from mljob.kube.credentials import Credentials

COMPONENT = "mljob-operator"
CONCURRENCY = 16
"""Requests in flight at once, by default. Each holds an HTTPS connection (aiohttp speaks HTTP/1.1, and asyncio's
TLS buffer alone is 256 KB): more cost the operator memory without starting jobs any sooner, fewer delayed the
first pods (bench/README.md, "Memory", has the runs)."""


def user_agent(component: str = COMPONENT) -> str:
    """``mljob-operator/<version>``: how the API server's audit log and metrics tell our requests apart."""
    from mljob import __version__

    return f"{component}/{__version__}"


CORE = {"Pod": "pods", "Service": "services", "Event": "events", "ConfigMap": "configmaps", "Secret": "secrets"}


class ApiError(Exception):
    """A request the API server refused or could not serve; ``status`` 0 means no response."""

    def __init__(self, status: int, reason: str, message: str, verb: str = "", path: str = "") -> None:
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{verb} {path}: {status} {reason}: {message}".strip())

    @property
    def conflict(self) -> bool:
        return self.status == 409


class Gone(Exception):
    """A watch's resourceVersion is too old (410): list again."""


def job_path(namespace: str, name: str = "", subresource: str = "", kind: JobKind = MLJOB) -> str:
    """The REST path of a job of ``kind`` (an MLJob unless told)."""
    return kind.path(namespace, name, subresource)


def core_path(kind: str, namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/{CORE[kind]}" + (f"/{name}" if name else "")


PLURALS = {**CORE, "Workload": "workloads", "PodGroup": "podgroups"}


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """The REST path of a namespaced object of a kind the operator creates: core or a named group."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{PLURALS[kind]}" + (f"/{name}" if name else "")


class Api:
    """mljob's API calls; one instance per process, one aiohttp session, bounded concurrency."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        concurrency: int = CONCURRENCY,
        timeout: float = 30.0,
        component: str = COMPONENT,
    ) -> None:
        self.credentials = credentials
        self.user_agent = user_agent(component)
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests sent, for logs and tests."""
        self.observe: Callable[[str, int], None] = lambda verb, code: None
        """Told every request's verb and status (0: no response): the operator's metrics."""

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"User-Agent": self.user_agent}
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        auth = self.credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        return headers

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """One watch request's events (bookmarks included); ends when the server ends it (``timeoutSeconds``).

        Outside the concurrency limit: a watch holds its connection for minutes and must not starve requests.
        Raises :class:`Gone` when the server answers 410 at once (a 410 inside the stream is an ERROR event),
        :class:`ApiError` when the watch cannot start. A stream cut after it started just ends, as one the server
        ended: the caller resumes from the last resourceVersion it saw, as client-go does, without a new list.
        """
        query = {**params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=330)
        try:
            async with self._client().get(
                self.credentials.server + path, params=query, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status == 410:
                    raise Gone()
                if response.status >= 400:
                    raise ApiError(response.status, response.reason or "", await response.text(), "WATCH", path)
                try:
                    async for line in response.content:
                        if line.strip():
                            yield json.loads(line)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError, ValueError):
                    return  # cut mid-stream (a half-sent last line included): nothing read is lost
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(0, type(error).__name__, str(error), "WATCH", path) from error

    async def request(
        self, verb: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        headers = {**self._headers(), "Content-Type": content_type}
        async with self._limit:
            self.requests += 1
            try:
                async with self._client().request(
                    verb, self.credentials.server + path, json=body, headers=headers
                ) as response:
                    self.observe(verb, response.status)
                    try:
                        data = await response.json(content_type=None)
                    except ValueError:
                        data = {"message": (await response.text())[:200]}
                    if response.status >= 400:
                        data = data if isinstance(data, dict) else {}
                        raise ApiError(
                            response.status,
                            str(data.get("reason") or response.reason or ""),
                            str(data.get("message") or ""),
                            verb,
                            path,
                        )
                    return data if isinstance(data, dict) else {}
            except (aiohttp.ClientError, TimeoutError) as error:
                self.observe(verb, 0)
                raise ApiError(0, type(error).__name__, str(error), verb, path) from error

    # --- children --------------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a pod or service: the server's copy, or None when the name exists (creates are idempotent)."""
        meta = obj["metadata"]
        try:
            return await self.request("POST", object_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    async def served(self, group_version: str, resources: tuple[str, ...]) -> bool:
        """Whether the API server serves every one of ``resources`` in ``group_version`` (discovery)."""
        try:
            found = await self.request("GET", f"/apis/{group_version}")
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        names = {str(r.get("name")) for r in found.get("resources") or ()}
        return set(resources) <= names

    async def ensure_peering(self, name: str, namespaces: list[str]) -> list[str]:
        """Create kopf's peering object(s) named ``name`` unless they exist; the problems, for a warning.

        kopf only patches its peering object and needs it to exist. Created here, not in deploy/, a custom
        resource in the same `kubectl apply -k` as its CRD would be refused until the CRD is registered.
        ``namespaces`` empty: the ClusterKopfPeering; else a KopfPeering in each (globs are skipped).
        """
        targets: list[tuple[str, str, str | None]] = []
        if not namespaces:
            targets.append(("/apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", None))
        targets += [
            (f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", "KopfPeering", ns)
            for ns in namespaces
            if not any(c in ns for c in "*?![]")
        ]
        problems = []
        for path, kind, namespace in targets:
            meta = {"name": name, **({"namespace": namespace} if namespace else {})}
            try:
                await self.request("POST", path, {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta})
            except ApiError as error:
                if error.status != 409:
                    problems.append(f"{kind} {name}: {error}")
        return problems

    async def get(self, kind: str, namespace: str, name: str, api_version: str = "v1") -> dict[str, Any] | None:
        """Read one child; None when there is none (used only to explain a name clash)."""
        try:
            return await self.request("GET", object_path(api_version, kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str, uid: str, api_version: str = "v1") -> bool:
        """Delete exactly the object with ``uid`` (any, without one); False when it is already gone or replaced."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", object_path(api_version, kind, namespace, name), options)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, resource_version: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of another object's ``/status`` (a Kueue Workload), resourceVersion as precondition."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = object_path(api_version, kind, namespace, name) + "/status"
        return await self.request("PATCH", path, body, "application/merge-patch+json")

    async def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """JSON merge patch of one object the operator creates; False when it does not exist."""
        try:
            await self.request(
                "PATCH", object_path(api_version, kind, namespace, name), patch, "application/merge-patch+json"
            )
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def get_cluster_object(self, group_version: str, plural: str, name: str) -> dict[str, Any] | None:
        """Read one cluster-scoped object (a Kueue ResourceFlavor); None when there is none."""
        try:
            return await self.request("GET", f"/apis/{group_version}/{plural}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    # --- the job ---------------------------------------------------------------------------------

    async def patch_job(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        patch: Mapping[str, Any],
        status: bool = False,
        kind: JobKind = MLJOB,
    ) -> dict[str, Any]:
        """JSON merge patch of the job (or its ``/status``) with the resourceVersion as a precondition."""
        body = dict(patch)
        if resource_version:
            body["metadata"] = {**dict(body.get("metadata") or {}), "resourceVersion": resource_version}
        path = job_path(namespace, name, "status" if status else "", kind)
        return await self.request("PATCH", path, body, "application/merge-patch+json")

    async def delete_job(self, namespace: str, name: str, uid: str, kind: JobKind = MLJOB) -> bool:
        """Delete the job (TTL); its children go with it through their ownerReferences."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": uid},
        }
        try:
            await self.request("DELETE", job_path(namespace, name, kind=kind), options)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def event(self, job: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the job (what ``kubectl describe mljob`` shows)."""
        meta = job.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "default")), str(meta.get("name", ""))
        now = format_time(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": str(job.get("apiVersion") or f"{GROUP}/{VERSION}"),
                "kind": str(job.get("kind") or KIND),
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", core_path("Event", namespace), event)
