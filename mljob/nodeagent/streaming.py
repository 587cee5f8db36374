"""``kubectl exec`` and ``kubectl port-forward`` through the kubelet API: who may, which process, and the relay.

The API server relays both to the Node's kubelet endpoint as an HTTP upgrade (SPDY/3.1; WebSocket too, in
principle). The stream protocols are not written here: the agent starts the ``kubelet-streaming`` helper
(controlplane/go/kubelet-streaming, built by ``make controlplane``: k8s.io/cri-streaming's ``ServeExec`` and
``ServePortForward``, the code behind a CRI runtime's streaming server) once per request, with one end of a socket
pair as its stdin, writes it the client's request head with one header added (:data:`TARGET_HEADER`: which
process to enter, the container's environment), and then copies bytes both ways between that socket and the
client's TLS connection until either side closes. The helper runs ``nsenter --target <PID 1 of the container>``
into the container's namespaces for exec, and dials 127.0.0.1 inside the pod's network namespace for port-forward.

Authorization is the kubelet's webhook mode: the client's identity from its TLS certificate (CN the user, O the
groups), and a SubjectAccessReview for ``nodes/<subresource>`` with the HTTP method's verb, cached as the
kubelet caches them (allowed 5 minutes, denied 30 seconds).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict

from mljob.kube import Api, ApiError
from mljob.nodeagent.handlers import JOIN_SHIM, cgroup_files
from mljob.nodeagent.runtime import PDEATHSIG

log = logging.getLogger("mljob.nodeagent")

HELPER = "kubelet-streaming"
TARGET_HEADER = "X-Mljob-Target"
"""The header the agent adds to the request it hands the helper (a client's own is dropped): base64 of JSON."""
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
"""The kubelet's defaults for caching SubjectAccessReview answers (--authorization-webhook-cache-*-ttl)."""
CHUNK = 64 * 1024
HIGH_WATER = 1024 * 1024
"""Bytes queued toward the helper before the client's connection stops being read."""
HELPER_EXIT = 5.0


def default_helper() -> Path | None:
    """The helper on PATH, else the one ``make controlplane`` built in this checkout; None when neither exists."""
    found = shutil.which(HELPER)
    if found:
        return Path(found)
    built = Path(__file__).resolve().parents[2] / "controlplane" / "bin" / HELPER
    return built if built.is_file() else None


# --- which process -------------------------------------------------------------------------------------------


class NoTarget(Exception):
    """No process to exec in or forward to; ``status`` and the message are the kubelet's kind of answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ExecTarget:
    """A running container: its PID 1 (the ``sh`` child of the innermost ``unshare``) and that process's env."""

    pid: int
    env: Mapping[str, str]
    user_namespace: bool = False
    """The container is in a user namespace of its own (the rootless isolation): nsenter enters it too."""

    def nsenter(self) -> list[str]:
        """Into its cgroups, then its mount, UTS, IPC, network and PID namespaces, in its working folder (PID 1's
        cwd, which is the container's workingDir inside its own mount namespace, where a volume may hold it)."""
        user = ["--user", "--preserve-credentials"] if self.user_namespace else []
        # first into the container's cgroups, as runc's exec: what the command uses counts against its limits
        joins = ["sh", "-c", JOIN_SHIM, "mljob-exec", *cgroup_files(self.pid), "--"]
        nsenter = ["nsenter", f"--target={self.pid}", *user, "--mount", "--uts", "--ipc", "--net", "--pid", "--wd"]
        return [*joins, *nsenter, "--"]


def container_init(pid: int) -> int | None:
    """PID 1 of a container whose process (the outermost one the agent started) is ``pid``: its child in a PID
    namespace other than ours. None while the exec chain is not there yet, or once the container has ended."""
    try:
        ours = os.readlink("/proc/self/ns/pid")
        children = [
            int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
        ]
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != ours:
                return child
    return None


def exec_target(init: int) -> ExecTarget:
    """What exec needs of a container's PID 1: the environment it started with (the container's, as the agent
    computed it: mljob.nodeagent.podspec.launch), and whether it is in a user namespace of its own."""
    try:
        raw = Path(f"/proc/{init}/environ").read_bytes()
        own_user = os.readlink(f"/proc/{init}/ns/user") != os.readlink("/proc/self/ns/user")
    except OSError as error:
        raise NoTarget(500, f"the container's process {init} is gone: {error}") from None
    env = dict(item.decode(errors="surrogateescape").split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    return ExecTarget(init, env, own_user)


# --- who may -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """An authenticated client: its certificate's CN and O's, as the kubelet's x509 authenticator reads them."""

    user: str
    groups: tuple[str, ...] = ()


def identity_of(peercert: Mapping[str, Any] | None) -> Identity | None:
    """The client certificate's subject (``ssl.SSLSocket.getpeercert()``), or None without one."""
    if not peercert:
        return None
    names = [(k, v) for rdn in peercert.get("subject", ()) for k, v in rdn]
    user = next((v for k, v in names if k == "commonName"), None)
    if not user:
        return None
    return Identity(user, (*(v for k, v in names if k == "organizationName"), "system:authenticated"))


VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
SUBRESOURCES = {"stats": "stats", "metrics": "metrics", "logs": "log", "checkpoint": "checkpoint"}
"""The kubelet's path-to-subresource map (pkg/kubelet/server/auth.go); every other path, /exec, /portForward,
/attach and /containerLogs among them, is ``nodes/proxy``."""


def attributes(method: str, path: str) -> tuple[str, str]:
    """The (verb, subresource of ``nodes``) the kubelet checks for a request."""
    first = path.strip("/").split("/", 1)[0]
    return VERBS.get(method.upper(), ""), SUBRESOURCES.get(first, "proxy")


@dataclass
class Authorizer:
    """SubjectAccessReviews through the agent's own client (which may create them), answers cached."""

    api: Api
    cache: dict[tuple[Identity, str, str, str], tuple[bool, float]] = field(default_factory=dict)

    async def allowed(self, who: Identity, verb: str, subresource: str, node: str) -> bool:
        """ApiError when the API server cannot answer (the kubelet then says ``Authorization error``)."""
        key = (who, verb, subresource, node)
        now = time.monotonic()
        cached = self.cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": who.user,
                "groups": list(who.groups),
                "resourceAttributes": {
                    "verb": verb,
                    "version": "v1",
                    "resource": "nodes",
                    "subresource": subresource,
                    "name": node,
                },
            },
        }
        answer = await self.api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        allowed = bool((answer.get("status") or {}).get("allowed"))
        if len(self.cache) > 1000:
            self.cache = {k: v for k, v in self.cache.items() if v[1] > now}
        self.cache[key] = (allowed, now + (ALLOWED_TTL if allowed else DENIED_TTL))
        return allowed


async def authorize(request: web.Request, authorizer: Authorizer, node: str) -> web.Response | None:
    """None when the client may make this request; else the kubelet's 401/403/500 answer."""
    who = identity_of(request.transport.get_extra_info("peercert") if request.transport else None)
    if who is None:
        return web.Response(status=401, text="Unauthorized")
    verb, subresource = attributes(request.method, request.path)
    try:
        ok = await authorizer.allowed(who, verb, subresource, node)
    except (TimeoutError, ApiError, OSError) as error:
        log.error("authorizing %s %s for %s: %s", request.method, request.path, who.user, error)
        return web.Response(
            status=500,
            text=f"Authorization error (user={who.user}, verb={verb}, resource=nodes, subresource={subresource})",
        )
    if not ok:
        return web.Response(
            status=403,
            text=f"Forbidden (user={who.user}, verb={verb}, resource=nodes, subresource(s)=[{subresource}])\n",
        )
    return None


# --- the relay -----------------------------------------------------------------------------------------------


def request_head(request: web.Request, target: Mapping[str, Any]) -> bytes:
    """The client's request line and headers, with the target header added (any the client sent is dropped), and
    ``Connection: close`` when it asks for no upgrade, so the helper's answer ends with the connection."""
    lines = [f"{request.method} {request.raw_path} HTTP/1.1"]
    upgrade = "upgrade" in request.headers.get("Connection", "").lower()
    for name, value in request.raw_headers:
        lowered = name.decode("latin-1").lower()
        if lowered == TARGET_HEADER.lower() or (not upgrade and lowered == "connection"):
            continue
        lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
    if not upgrade:
        lines.append("Connection: close")
    lines.append(f"{TARGET_HEADER}: {base64.b64encode(json.dumps(target).encode()).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    """Status, reason and headers of the helper's answer."""
    first, *rest = head.decode("latin-1").split("\r\n")
    _, status, *reason = first.split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in rest:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    return int(status), (reason[0] if reason else ""), headers


class _ToHelper:
    """Takes the client's bytes once the connection is upgraded (aiohttp's protocol feeds it as it feeds a
    WebSocket reader) and writes them to the helper; stops reading the client while too much is queued."""

    def __init__(self, writer: asyncio.StreamWriter, request: web.Request) -> None:
        self.writer, self.request = writer, request
        self._resuming: asyncio.Task[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.writer.is_closing():
            return False, b""
        self.writer.write(data)
        client = self.request.transport
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER and client is not None and not self._resuming:
            client.pause_reading()
            self._resuming = asyncio.get_running_loop().create_task(self._resume(client))
        return False, b""

    async def _resume(self, client: asyncio.BaseTransport) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        with contextlib.suppress(RuntimeError, AttributeError):
            cast(asyncio.ReadTransport, client).resume_reading()
        self._resuming = None

    def feed_eof(self) -> None:
        """The client closed: the helper sees EOF and ends its streams."""
        with contextlib.suppress(OSError, RuntimeError):
            if not self.writer.is_closing() and self.writer.can_write_eof():
                self.writer.write_eof()


async def relay(
    request: web.Request, helper: Path, mode: str, target: Mapping[str, Any], running: set[asyncio.subprocess.Process]
) -> web.StreamResponse:
    """Serve the request with the helper (``mode`` ``exec`` or ``port-forward``), copying bytes both ways; the
    helper is in ``running`` meanwhile (the server kills those left when it shuts down)."""
    ours, theirs = socket.socketpair()
    try:
        process = await asyncio.create_subprocess_exec(
            *PDEATHSIG, str(helper), mode, stdin=theirs.fileno(), stdout=asyncio.subprocess.DEVNULL
        )  # started from the event loop's thread: the parent-death signal follows the thread that forked
    except OSError as error:
        ours.close()
        return web.Response(status=500, text=f"starting {helper}: {error}")
    finally:
        theirs.close()
    running.add(process)
    reader, writer = await asyncio.open_connection(sock=ours, limit=CHUNK)
    try:
        writer.write(request_head(request, target))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return web.Response(status=500, text=f"{mode}: the streaming helper gave no answer (see the agent's log)")
        status, reason, headers = parse_head(head)
        if status != 101:
            length = headers.get("Content-Length")
            body = await (reader.readexactly(int(length)) if length else reader.read())
            kept = {k: v for k, v in headers.items() if k.lower() in ("content-type", "retry-after")}
            return web.Response(status=status, reason=reason or None, body=body, headers=kept)
        response = web.StreamResponse(status=101, reason=reason or None, headers=headers)
        response.force_close()
        # Before the 101 goes out: the client sends its first frame only after it, and from then on the
        # connection's bytes are not HTTP for aiohttp to parse.
        request.protocol.set_parser(cast(Any, _ToHelper(writer, request)))
        await response.prepare(request)
        await response.write(b"")  # aiohttp holds headers back until a body write: send the 101 now
        with contextlib.suppress(ConnectionError, RuntimeError):
            while chunk := await reader.read(CHUNK):
                await response.write(chunk)
        return response
    finally:
        writer.close()
        try:
            await asyncio.wait_for(process.wait(), HELPER_EXIT)
        except TimeoutError:  # its command is still running and holds it: the client is gone
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        running.discard(process)


def unavailable(what: str) -> web.Response:
    """The helper is not built (or not found): say how to get it."""
    return web.Response(
        status=501,
        text=f"{what}: the node agent serves it with the {HELPER} helper, which is not built here: run "
        f"`make controlplane` (controlplane/bin/{HELPER}) or pass mljob node-agent --streaming-helper",
    )


def exec_spec(target: ExecTarget, pod: str, uid: str, container: str) -> dict[str, Any]:
    return {
        "nsenter": target.nsenter(),
        "env": [f"{k}={v}" for k, v in target.env.items()],
        "pod": pod,
        "uid": uid,
        "container": container,
    }


def port_forward_spec(netns: str, pod: str, uid: str) -> dict[str, Any]:
    return {"netns": netns, "pod": pod, "uid": uid}
