"""Running a probe's or a hook's action for real: a command inside the container, an HTTP GET, a TCP connect.

**Where the network actions connect from.** The kubelet dials a pod's IP from the node's network. Here a pod's IP
is reachable where its sandbox put it: with ``--network host`` it is the node's own address, reachable from the
agent's namespace; with ``--network namespaced`` it is on the bridge of the cluster's private network namespace,
which the agent's namespace has no route to. So every connection is made on a socket from a
:data:`SocketFactory`: :func:`sockets_for` gives a plain socket for the host network and, for a
:class:`~mljob.nodeagent.network.NamespacedNetwork`, one made inside the cluster namespace
(:meth:`ClusterNetwork.socket`: a socket keeps the namespace it was made in), the "node's network" of the pods
there. Sockets close with SO_LINGER 0, as the kubelet's probe dialer's, so probes leave no TIME_WAIT behind.

**How a command enters the container.** A container's process chain ends in ``unshare --pid --fork ...``, whose
child is the container's PID 1 (mljob.nodeagent.runtime); the command runs as
``setpriv --pdeathsig KILL -- nsenter --target <PID 1> --pid --mount --net --uts -- sh -c 'cd WORKDIR; exec ...'``
with the container's environment: in its PID namespace (it dies with the container), its mounts (the volumes
bound there), its network and hostname, its cgroups (joined first, as runc joins an exec'd process), and with
the agent (the parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import signal
import socket
import ssl
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from mljob.local.procs import kill_session
from mljob.nodeagent.podspec import Mount
from mljob.nodeagent.probes import (
    MAX_OUTPUT,
    HttpRequest,
    Probe,
    ProbeError,
    http_request,
    probe_command,
    resolve_port,
)
from mljob.nodeagent.runtime import PDEATHSIG

SocketFactory = Callable[[int], socket.socket]
"""Makes an unconnected TCP socket of an address family where the pods' IPs are reachable."""

EXEC_SHIM = 'cd "$1" || exit 126; shift; exec "$@"'
JOIN_SHIM = 'while [ "$1" != -- ]; do echo $$ 2>/dev/null > "$1"; shift; done; shift; exec "$@"'
"""Joins the container's cgroups (each ``cgroup.procs`` given) before it execs ``nsenter``, whose child starts
there: as runc puts an exec'd process in the container's cgroups, its memory counts against the limit."""
MAX_REDIRECTS = 10
FIND_INIT_SECONDS = 5.0


def host_sockets(family: int) -> socket.socket:
    """A socket in the agent's own network namespace (``--network host``: the pods' IP is the node's)."""
    return socket.socket(family, socket.SOCK_STREAM)


def sockets_for(network: object) -> SocketFactory:
    """Where a node's pods are reachable from: the cluster namespace for namespaced pods, else the host."""
    from mljob.nodeagent.network import NamespacedNetwork

    if isinstance(network, NamespacedNetwork):
        cluster = network.cluster
        return lambda family: cluster.socket(family)
    return host_sockets


class ExecError(Exception):
    """A command that could not be run in the container (it is not running, nsenter failed to start)."""


@dataclass
class ExecTarget:
    """A running container to run commands in: the process the agent started, its environment and folder."""

    pid: int
    """The agent's child: after the sandbox prefix's execs, the ``unshare`` whose child is the container's PID 1."""
    env: Mapping[str, str]
    working_dir: str
    mounts: Sequence[Mount] = ()
    user_namespace: bool = False
    """The container runs in a user namespace (the rootless isolation): enter it too."""
    _init: int | None = field(default=None, repr=False)

    async def init_pid(self) -> int | None:
        """The container's PID 1 (the child of :attr:`pid` in another PID namespace) once it has bound every
        volume and started the command: a runtime does both before it reports the container started, so a
        postStart hook run at once must find the mounts, and a kill after it must reach the command (PID 1 itself
        ignores SIGTERM)."""
        if self._init is not None and os.path.exists(f"/proc/{self._init}"):
            return self._init
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIND_INIT_SECONDS
        while loop.time() < deadline:
            found = container_init(self.pid)
            if found is not None and mounted(found, self.mounts) and command_started(found):
                self._init = found
                return found
            if not os.path.exists(f"/proc/{self.pid}"):
                return None
            await asyncio.sleep(0.02)
        return None


def container_init(pid: int) -> int | None:
    """The child of ``pid`` that lives in another PID namespace than ``pid`` itself, or None (not yet, or gone).

    Before the prefix has exec'd its way to ``unshare`` the children are the prefix's helpers (``mount``), in
    ``pid``'s own namespace; after it, the only child is the container's PID 1.
    """
    try:
        own = os.readlink(f"/proc/{pid}/ns/pid")
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = listing.read().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != own:
                return int(child)
    return None


def mounted(pid: int, mounts: Sequence[Mount]) -> bool:
    """Whether every one of ``mounts`` is a mount point in ``pid``'s mount namespace (read-only ones as such)."""
    if not mounts:
        return True
    try:
        with open(f"/proc/{pid}/mountinfo") as info:
            lines = [line.split() for line in info]
    except OSError:
        return False
    points = {fields[4].replace("\\040", " "): fields[5].split(",") for fields in lines if len(fields) > 5}
    for m in mounts:
        options = points.get(posixpath.normpath(m.path)) or points.get(os.path.realpath(m.path))
        if options is None or (m.read_only and "ro" not in options):
            return False
    return True


SHIM_TOOLS = frozenset({"mount", "mkdir", "dirname"})
"""What PID 1's shim (runtime.MOUNT_SHIM) runs before the command."""


def command_started(init: int) -> bool:
    """Whether the container's PID 1 has started its command: a child that has exec'd something other than the
    shim itself or the tools it runs to bind the volumes."""
    try:
        with open(f"/proc/{init}/cmdline", "rb") as own:
            shim = own.read()
        with open(f"/proc/{init}/task/{init}/children") as listing:
            children = listing.read().split()
    except OSError:
        return False
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as raw:
                argv = raw.read()
        except OSError:
            continue
        name = posixpath.basename(argv.split(b"\0")[0].decode(errors="replace"))
        if argv and argv != shim and name not in SHIM_TOOLS:
            return True
    return False


def _cgroups(pid: str) -> dict[frozenset[str], str]:
    """A process's cgroup in each hierarchy, keyed by the hierarchy's controllers (v2's: the empty set)."""
    out: dict[frozenset[str], str] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out[frozenset(filter(None, controllers.split(",")))] = path
    return out


def _cgroup_mounts() -> dict[frozenset[str], tuple[str, str]]:
    """Each cgroup hierarchy mounted in the agent's namespace: its controllers -> (root, mount point)."""
    out: dict[frozenset[str], tuple[str, str]] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as lines:
        for line in lines:
            mount, _, fs = line.partition(" - ")
            fields, kind = mount.split(), fs.split()
            if len(fields) < 5 or len(kind) < 3 or kind[0] not in ("cgroup", "cgroup2"):
                continue
            options = {o for o in kind[2].split(",") if o not in ("rw", "ro")}
            key = frozenset() if kind[0] == "cgroup2" else frozenset(options)
            out.setdefault(key, (fields[3], fields[4].replace("\\040", " ")))
    return out


def cgroup_files(pid: int) -> list[str]:
    """The ``cgroup.procs`` files of ``pid``'s cgroups that are not the agent's own (none where the agent makes
    no cgroups): what a command run in its container joins."""
    own, mounts = _cgroups("self"), _cgroup_mounts()
    out = []
    for key, path in _cgroups(str(pid)).items():
        if own.get(key) == path or key not in mounts:
            continue
        root, point = mounts[key]
        inside = posixpath.relpath(path, root)
        if not inside.startswith(".."):
            out.append(posixpath.normpath(posixpath.join(point, inside, "cgroup.procs")))
    return out


@dataclass(frozen=True)
class Exec:
    """How a command in the container ended: its exit code (None: killed at its timeout), its output."""

    code: int | None
    output: str


async def exec_in(target: ExecTarget, argv: Sequence[str], timeout: float | None) -> Exec:
    """Run ``argv`` in the container (see the module docstring), stdout and stderr together, the first 10 KiB
    kept; killed with everything it started after ``timeout`` seconds or when the caller is cancelled."""
    init = await target.init_pid()
    if init is None:
        raise ExecError("container is not running")
    namespaces = ["--user"] if target.user_namespace else []
    namespaces += ["--pid", "--mount", "--net", "--uts"]
    command = [*PDEATHSIG, "sh", "-c", JOIN_SHIM, "mljob-exec", *cgroup_files(init), "--"]
    command += ["nsenter", f"--target={init}", *namespaces, "--", "sh", "-c", EXEC_SHIM]
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, "mljob-exec", target.working_dir, *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(target.env),
            cwd="/",
            start_new_session=True,
        )  # fmt: skip
    except OSError as error:
        raise ExecError(str(error)) from error
    kept = bytearray()
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(64 * 1024):
                kept += chunk[: max(0, MAX_OUTPUT - len(kept))]
            code = await proc.wait()
    except TimeoutError:
        return Exec(None, kept.decode(errors="replace"))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await kill_session(proc.pid)
            await proc.wait()
    return Exec(128 - code if code < 0 else code, kept.decode(errors="replace"))


class DialError(Exception):
    """A connection or an HTTP exchange that failed; the message is worded as the kubelet's Go client words it."""


def _linger(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def dial(sockets: SocketFactory, host: str, port: int) -> socket.socket:
    """A TCP connection to ``host:port`` made on a socket from ``sockets`` (the caller bounds the time)."""
    loop = asyncio.get_running_loop()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, _, _, _, where = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    except OSError as error:
        raise DialError(f"dial tcp: lookup {host}: {error}") from error
    sock = await asyncio.to_thread(sockets, family)
    try:
        sock.setblocking(False)
        _linger(sock)
        await loop.sock_connect(sock, where)
    except asyncio.CancelledError:
        sock.close()
        raise
    except OSError as error:
        sock.close()
        reason = os.strerror(error.errno).lower() if error.errno else str(error)
        raise DialError(f"dial tcp {address}: connect: {reason}") from error
    return sock


async def tcp_check(sockets: SocketFactory, host: str, port: int, timeout: float) -> None:
    """The tcpSocket action: a connection that opens (and is closed at once); DialError when it does not."""
    try:
        async with asyncio.timeout(timeout):
            sock = await dial(sockets, host, port)
    except TimeoutError:
        raise DialError(f"dial tcp {host}:{port}: i/o timeout") from None
    sock.close()


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    location: str | None = None


async def http_get(sockets: SocketFactory, request: HttpRequest, timeout: float | None) -> HttpResponse:
    """GET as the kubelet's probe client: no proxy, TLS unverified, redirects followed on the same host (10 at
    most), a redirect elsewhere returned as is; the whole exchange within ``timeout`` (None: no limit)."""
    first = request.url
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_REDIRECTS + 1):
                response = await _exchange(sockets, request)
                if not (300 <= response.status < 400 and response.location):
                    return response
                target = urlsplit(urljoin(request.url, response.location))
                if target.hostname != request.host or target.scheme not in ("http", "https"):
                    return response
                path = (target.path or "/") + (f"?{target.query}" if target.query else "")
                default = 443 if target.scheme == "https" else 80
                request = HttpRequest(target.scheme, request.host, target.port or default, path, request.headers)
            raise DialError(f'Get "{first}": stopped after {MAX_REDIRECTS} redirects')
    except TimeoutError:
        raise DialError(
            f'Get "{first}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
        ) from None
    except DialError as error:
        message = str(error)
        raise DialError(message if message.startswith("Get ") else f'Get "{request.url}": {message}') from None


async def _exchange(sockets: SocketFactory, request: HttpRequest) -> HttpResponse:
    sock = await dial(sockets, request.host, request.port)
    context = None
    if request.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=request.host if context else None
        )
    except (OSError, ssl.SSLError) as error:
        sock.close()
        raise DialError(str(error)) from error
    try:
        host = next((v for n, v in request.headers if n.lower() == "host"), None)
        default = 443 if request.scheme == "https" else 80
        hostport = request.host if request.port == default else f"{request.host}:{request.port}"
        lines = [f"GET {request.path} HTTP/1.1", f"Host: {host or hostport}"]
        lines += [f"{n}: {v}" for n, v in request.headers if n.lower() != "host"]
        lines += ["Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1", errors="replace"))
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").split()
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
            raise DialError(f"malformed HTTP response {' '.join(status_line)!r}")
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        length = headers.get("content-length")
        want = min(int(length), MAX_OUTPUT) if length and length.isdigit() else MAX_OUTPUT
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while len(body) < want and (chunk := await reader.read(want - len(body))):
                body += chunk
        return HttpResponse(int(status_line[1]), body, headers.get("location"))
    except OSError as error:
        raise DialError(str(error)) from error
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass(frozen=True)
class HandlerContext:
    """What a probe or hook of one running container needs: the container's spec, where to run and connect."""

    container: Mapping[str, Any]
    pod_ip: str
    sockets: SocketFactory
    target: ExecTarget


@dataclass(frozen=True)
class Outcome:
    """A probe's result as the kubelet's prober sees it: ``warning`` is a success with an event, ``error`` a
    probe that could not be run (thrown away, neither success nor failure)."""

    result: Literal["success", "failure", "warning", "error"]
    message: str = ""


async def run_probe(probe: Probe, ctx: HandlerContext) -> Outcome:
    """Run one probe once, bounded by its ``timeoutSeconds``."""
    try:
        if probe.action == "exec":
            argv = probe_command(probe.handler.get("command") or (), ctx.container)
            done = await exec_in(ctx.target, argv, probe.timeout)
            if done.code is None:
                return Outcome("failure", f"command timed out: {' '.join(argv)!r} timed out after {probe.timeout:g}s")
            return Outcome("success" if done.code == 0 else "failure", done.output)
        if probe.action == "httpGet":
            request = http_request(probe.handler, ctx.container, ctx.pod_ip, "probe")
            try:
                response = await http_get(ctx.sockets, request, probe.timeout)
            except DialError as error:
                return Outcome("failure", str(error))
            body = response.body.decode(errors="replace")
            if 200 <= response.status < 300:
                return Outcome("success", body)
            if 300 <= response.status < 400:
                return Outcome("warning", f"Probe terminated redirects, Response body: {body}")
            return Outcome("failure", f"HTTP probe failed with statuscode: {response.status}")
        if probe.action == "tcpSocket":
            port = resolve_port(probe.handler.get("port"), ctx.container)
            host = str(probe.handler.get("host") or ctx.pod_ip)
            try:
                await tcp_check(ctx.sockets, host, port, probe.timeout)
            except DialError as error:
                return Outcome("failure", str(error))
            return Outcome("success")
    except (ProbeError, ExecError) as error:
        return Outcome("error", str(error))
    return Outcome("error", f"missing probe handler for container {ctx.container.get('name')}")


async def run_hook(handler: Mapping[str, Any], ctx: HandlerContext) -> str | None:
    """Run a postStart/preStop handler as the kubelet's handler runner; None on success, else why it failed.

    exec: the command as written (no ``$(VAR)`` expansion), no timeout, a non-zero exit fails it. httpGet:
    User-Agent ``kube-lifecycle``, fails only when no answer comes (any status is an answer, as the kubelet's).
    sleep: ``sleep.seconds``. Anything else (the deprecated tcpSocket) fails, as the kubelet's. The caller bounds
    the time (a preStop by the grace period).
    """
    name = ctx.container.get("name")
    if handler.get("exec") is not None:
        argv = [str(a) for a in handler["exec"].get("command") or ()]
        try:
            done = await exec_in(ctx.target, argv, None)
        except ExecError as error:
            return f"Exec lifecycle hook ({argv}) for Container {name!r} failed - error: {error}"
        if done.code != 0:
            return f"Exec lifecycle hook ({argv}) for Container {name!r} failed - exit {done.code}: {done.output!r}"
        return None
    if handler.get("httpGet") is not None:
        try:
            request = http_request(handler["httpGet"], ctx.container, ctx.pod_ip, "lifecycle")
            await http_get(ctx.sockets, request, None)
        except (ProbeError, DialError) as error:
            path = handler["httpGet"].get("path", "")
            return f"HTTP lifecycle hook ({path}) for Container {name!r} failed - error: {error}"
        return None
    if handler.get("sleep") is not None:
        await asyncio.sleep(float(handler["sleep"].get("seconds") or 0))
        return None
    return f"Cannot run handler: invalid handler: {dict(handler)}"
