"""The operator's few writes to the Kubernetes API, over one async aiohttp session.

Why aiohttp and not the official ``kubernetes`` client: the operator runs on kopf's asyncio loop,
and the official client is synchronous (every call would block the loop or need a thread); kopf
itself talks to the API over aiohttp, and the operator needs only nine calls (create, read and delete
a pod or service, patch the job's metadata and status, delete the job, post an event). The
``kubernetes`` package is still used for what it does best, and only then (:meth:`Credentials.load`): a
kubeconfig whose user runs an exec plugin or an auth provider, or a merged list of kubeconfigs.

Outcomes that mean "already done" are not errors: AlreadyExists on create, NotFound on delete,
and a failed uid precondition on delete (the name now belongs to a newer object). Everything
else raises :class:`ApiError`; the caller retries the whole pass later (conflicts included: the
next pass reads the newer object).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

from mljob.api import GROUP, KIND, PLURAL, VERSION, format_time

COMPONENT = "mljob-operator"
CONCURRENCY = 16
"""Requests in flight at once, by default. Each holds an HTTPS connection (aiohttp speaks HTTP/1.1, and asyncio's
TLS buffer alone is 256 KB): 16 took 200 jobs of 4 pods to Running as fast as 32 on bench/headtohead.py's control
plane, in about 5 MB less of the operator's memory."""
logger = logging.getLogger("mljob.kube")


def user_agent(component: str = COMPONENT) -> str:
    """``mljob-operator/<version>``: how the API server's audit log and metrics tell our requests apart."""
    from mljob import __version__

    return f"{component}/{__version__}"


CORE = {"Pod": "pods", "Service": "services", "Event": "events"}


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


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_USER_KEYS = frozenset({"token", "client-certificate", "client-certificate-data", "client-key", "client-key-data"})
_CLUSTER_KEYS = frozenset({"server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify"})


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate, as read from a kubeconfig or a pod."""

    server: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    authorization: Callable[[], str | None] = lambda: None
    """The ``Authorization`` header value, asked for per request so a refreshed token is used."""
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    """PEM, from a kubeconfig's ``*-data`` fields."""

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials:
        """The in-cluster service account when running in a pod, else the kubeconfig (``KUBECONFIG``).

        What needs no code to run (a token, a client certificate, as files or data) is read here; a user with an
        exec plugin or an auth provider, and a merged ``KUBECONFIG`` list, go to the ``kubernetes`` package, which
        runs and merges those. Only then is it imported: it costs the operator about a quarter of its memory.
        """
        if kubeconfig is None and context is None:
            found = cls.in_cluster()
            if found is not None:
                return found
        read = cls.from_kubeconfig(kubeconfig, context)
        return read if read is not None else cls.with_kubernetes(kubeconfig, context)

    @classmethod
    def in_cluster(cls, folder: Path = SERVICE_ACCOUNT) -> Credentials | None:
        """A pod's service account: its token is re-read once a minute (the kubelet rotates bound tokens)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port or not (folder / "token").is_file():
            return None
        read_at, token = -1e9, ""

        def authorization() -> str | None:
            nonlocal read_at, token
            if time.monotonic() - read_at > 60:
                token, read_at = (folder / "token").read_text().strip(), time.monotonic()
            return f"Bearer {token}" if token else None

        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        ca = folder / "ca.crt"
        return cls(server=server, ca_file=str(ca) if ca.is_file() else None, authorization=authorization)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials | None:
        """A kubeconfig's context with a token or a client certificate; None for what only ``kubernetes`` reads.

        File paths in it are relative to the kubeconfig's folder, as kubectl reads them.
        """
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if os.pathsep in path.strip(os.pathsep):
            return None
        file = Path(path.strip(os.pathsep)).expanduser()
        if not file.is_file():
            raise ValueError(f"{file}: no kubeconfig there (set KUBECONFIG, or run in a pod)")
        config = yaml.safe_load(file.read_text()) or {}

        def named(section: str, name: object) -> dict[str, Any]:
            for item in config.get(section) or ():
                if item.get("name") == name:
                    return dict(item.get(section[:-1]) or {})
            raise ValueError(f"{file}: no {section[:-1]} named {name!r}")

        if not (context or config.get("current-context")):
            raise ValueError(f"{file}: current-context is not set (or give a context)")
        ctx = named("contexts", context or config.get("current-context"))
        cluster, user = named("clusters", ctx.get("cluster")), named("users", ctx.get("user"))
        if set(user) - _USER_KEYS or set(cluster) - _CLUSTER_KEYS:
            return None
        if not cluster.get("server"):
            raise ValueError(f"{file}: cluster {ctx.get('cluster')!r} has no server")

        def local(key: str) -> str | None:
            value = user.get(key) or cluster.get(key)
            return str(file.parent / str(value)) if value else None

        def data(key: str) -> bytes | None:
            value = user.get(key) or cluster.get(key)
            return base64.b64decode(value) if value else None

        token = user.get("token")
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            ca_file=local("certificate-authority"),
            ca_data=data("certificate-authority-data"),
            verify=not cluster.get("insecure-skip-tls-verify"),
            cert_file=local("client-certificate"),
            cert_data=data("client-certificate-data"),
            key_file=local("client-key"),
            key_data=data("client-key-data"),
            authorization=(lambda: f"Bearer {token}") if token else (lambda: None),
        )

    @classmethod
    def with_kubernetes(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials:
        """Read by the ``kubernetes`` package: exec plugins, auth providers and merged kubeconfigs included."""
        import kubernetes  # heavy; imported only for what needs it

        client: Any = kubernetes.client
        config: Any = kubernetes.config  # untyped package
        cfg = client.Configuration()
        in_cluster = False
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
                in_cluster = True
            except config.ConfigException:
                pass
        if not in_cluster:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)

        def authorization() -> str | None:
            value = cfg.get_api_key_with_prefix("BearerToken")
            return str(value) if value else None

        return cls(
            server=str(cfg.host).rstrip("/"),
            ca_file=cfg.ssl_ca_cert,
            verify=bool(cfg.verify_ssl),
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            authorization=authorization,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_data or self.key_data:
            # ssl loads a key pair from files only: a private folder for the moment it takes.
            with tempfile.TemporaryDirectory(prefix="mljob-tls-") as folder:
                cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
                cert.write_bytes(self.cert_data or Path(str(self.cert_file)).read_bytes())
                key.write_bytes(self.key_data or Path(str(self.key_file)).read_bytes())
                context.load_cert_chain(str(cert), str(key))
        elif self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def job_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def core_path(kind: str, namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/{CORE[kind]}" + (f"/{name}" if name else "")


PLURALS = {**CORE, "Workload": "workloads", "PodGroup": "podgroups"}


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """The REST path of a namespaced object of a kind the operator creates: core or a named group."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{PLURALS[kind]}" + (f"/{name}" if name else "")


class Api:
    """The operator's API calls; one instance per process, one aiohttp session, bounded concurrency."""

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
        self.observe: Callable[[str, int], None] = lambda verb, code: None
        """Told every request's verb and status (0: no response): the operator's metrics."""
        """Requests sent, for logs and tests."""

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
        self, namespace: str, name: str, resource_version: str | None, patch: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any]:
        """JSON merge patch of the job (or its ``/status``) with the resourceVersion as a precondition."""
        body = dict(patch)
        if resource_version:
            body["metadata"] = {**dict(body.get("metadata") or {}), "resourceVersion": resource_version}
        path = job_path(namespace, name, "status" if status else "")
        return await self.request("PATCH", path, body, "application/merge-patch+json")

    async def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the job (TTL); its children go with it through their ownerReferences."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": uid},
        }
        try:
            await self.request("DELETE", job_path(namespace, name), options)
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
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
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


SYNC = "SYNC"
"""What :func:`inform` yields after every (re)list, with every listed object."""


Keep = Callable[[dict[str, Any]], "dict[str, Any] | None"]
"""What a list keeps of each object it reads (None: nothing)."""


def _whole(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


async def list_all(
    api: Api, path: str, params: Mapping[str, str] | None = None, page: int = 500, keep: Keep = _whole
) -> tuple[list[dict[str, Any]], str]:
    """What ``keep`` keeps of every object at ``path``, and the list's resourceVersion, in pages of ``page``.

    Pages keep the operator's peak memory down on a restart under thousands of pods: each page is decoded and
    trimmed by ``keep`` before the next arrives, instead of one response of every pod's full spec (a restart
    under 1,000 jobs of 4 pods held 42 MB of whole pods at once before ``keep``).
    """
    items: list[dict[str, Any]] = []
    query: dict[str, str] = {**(params or {}), "limit": str(page)}
    while True:
        found = await api.request("GET", f"{path}?{urlencode(query)}")
        items += [kept for obj in found.pop("items", None) or () if (kept := keep(obj)) is not None]
        meta = found.get("metadata") or {}
        if not meta.get("continue"):
            return items, str(meta.get("resourceVersion") or "")
        query["continue"] = str(meta["continue"])


async def inform(
    api: Api,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    what: str = "",
    page: int = 500,
    keep: Keep = _whole,
    failed: Callable[[ApiError], None] | None = None,
) -> AsyncIterator[tuple[str, Any]]:
    """List, then watch, for ever: ``(SYNC, items)`` after every (re)list, then ``(ADDED|MODIFIED|DELETED, obj)``.

    ``keep`` trims the listed objects as each page arrives (:func:`list_all`); watch events come whole.
    ``failed`` is told each failure before the back-off (the web UI shows it); it is logged either way.

    A client-go informer's loop: the watch resumes from the last resourceVersion seen (bookmarks included)
    when the server ends it, lists again when that version is too old (410), and backs off while the API
    server cannot be reached, logging each failure once per attempt. It never ends by itself: cancel it.
    """
    params = dict(params or {})
    delay, version = 0.5, ""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if not version:
                items, version = await list_all(api, path, params, page, keep)
                yield SYNC, items
                delay = 0.5
            started, events = loop.time(), 0
            async for event in api.watch(path, {**params, "resourceVersion": version}):
                kind, obj = str(event.get("type") or ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(obj.get("code") or 0), "", str(obj.get("message")), "WATCH", path)
                events += 1
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    yield kind, obj
            if events or loop.time() - started > 1.0:
                delay = 0.5  # an ordinary end (the server's timeout, a cut stream): resume at once
            else:  # ended as soon as it started: do not spin against a server or proxy that does that
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
        except Gone:
            version = ""
        except ApiError as error:
            logger.warning("watching %s: %s; again in %.1f s", what or path, error, delay)
            if failed is not None:
                failed(error)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
