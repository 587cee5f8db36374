"""A thin fault-injecting proxy in front of the real API server: failed writes and cut watch streams.

The operator is pointed at ``proxy.url`` (plain HTTP on loopback); the proxy forwards every request to the API
server over TLS as one identity (a client certificate), headers and bodies untouched, so the API server still
does all the work and its audit log still counts every request that reached it. On the way it can:

* answer a fraction of writes (POST, PUT, PATCH, DELETE) with an error of its own (500, 409 or 429 by default),
  without forwarding them: the write did not happen, exactly what the client is told;
* cut every watch stream a fixed time after it started, or all of them when told (``cut_watches()``), by
  closing the connection mid-stream, as a load balancer or an API server restart does.

It also counts what the API server sends down watch streams that a client must handle: BOOKMARK events and
410 Gone errors.

It runs its own asyncio loop in a thread so a synchronous test can start, tune and stop it.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
)
REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclass
class ProxyStats:
    """What the proxy did: requests seen by method, faults injected by code, watches started and cut."""

    requests: Counter[str] = field(default_factory=Counter)
    injected: Counter[int] = field(default_factory=Counter)
    watches: int = 0
    cut: int = 0
    gone: int = 0
    """410 Gone errors the API server sent down a watch stream (a resumed watch's version too old)."""
    bookmarks: dict[str, list[str]] = field(default_factory=dict)
    """By watched path: the resourceVersion of every BOOKMARK event the API server sent down its streams."""


def is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1")


class FaultProxy:
    """Forwards to ``upstream`` with ``ssl_context``; ``error_rate`` and ``cut_watches_after`` set the faults."""

    def __init__(
        self,
        upstream: str,
        ssl_context: ssl.SSLContext,
        *,
        error_rate: float = 0.0,
        codes: Sequence[int] = (500, 409, 429),
        cut_watches_after: float | None = None,
        seed: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ssl_context = ssl_context
        self.error_rate = error_rate
        self.codes = tuple(codes)
        self.cut_watches_after = cut_watches_after
        self.stats = ProxyStats()
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self._open: set[asyncio.Event] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inside the proxy's loop ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for event in list(self._open):
            event.set()  # open watches end now, not when the API server ends them
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _fault(self, request: web.Request) -> int | None:
        if request.method in WRITES and self.error_rate > 0 and self._random.random() < self.error_rate:
            return self._random.choice(self.codes)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests[request.method] += 1
        code = self._fault(request)
        if code is not None:
            self.stats.injected[code] += 1
            return injected(code, request)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        upstream = await self._session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers, data=body or None
        )
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-encoding":
                    response.headers.add(key, value)
            if "Content-Encoding" in upstream.headers:
                response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            try:
                await response.prepare(request)
                if is_watch(request) and upstream.status == 200:
                    return await self._stream_watch(request, upstream, response)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client hung up first (kopf dropping a watch): nothing to answer
                upstream.close()
            return response
        finally:
            upstream.release()

    async def _stream_watch(
        self, request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> web.StreamResponse:
        self.stats.watches += 1
        deadline = None if self.cut_watches_after is None else self._loop.time() + self.cut_watches_after
        cut = asyncio.Event()
        self._open.add(cut)
        pending = b""  # a watch event split across chunks, for the counting below (forwarding is unchanged)
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
                read = asyncio.ensure_future(upstream.content.readany())
                told = asyncio.ensure_future(cut.wait())
                done, _ = await asyncio.wait({read, told}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                told.cancel()
                if read not in done:
                    read.cancel()
                    self.stats.cut += 1
                    upstream.close()
                    if request.transport is not None:
                        request.transport.close()  # mid-stream, no final chunk: what a dropped connection looks like
                    return response
                try:
                    chunk = read.result()
                except aiohttp.ClientError:  # the API server ended the stream badly: so does the proxy
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if not chunk:
                    await response.write_eof()
                    return response
                *events, pending = (pending + chunk).split(b"\n")
                for line in events:
                    self._count(line, request.path)
                try:
                    await response.write(chunk)
                except ConnectionResetError:  # the client hung up (kopf reconnects an inactive watch): so do we
                    upstream.close()
                    return response
        finally:
            self._open.discard(cut)

    def _count(self, line: bytes, path: str) -> None:
        if b'"BOOKMARK"' not in line and b'"ERROR"' not in line:
            return
        event = json.loads(line)
        if event.get("type") == "BOOKMARK":
            version = str(event["object"]["metadata"]["resourceVersion"])
            self.stats.bookmarks.setdefault(path, []).append(version)
        elif event.get("type") == "ERROR" and event.get("object", {}).get("code") == 410:
            self.stats.gone += 1

    def cut_watches(self) -> None:
        """Cut every watch stream open now (from any thread)."""

        def cut() -> None:
            for event in list(self._open):
                event.set()

        self._loop.call_soon_threadsafe(cut)


def injected(code: int, request: web.Request) -> web.Response:
    """An error as the API server words it (a Status object), so clients parse it as a real one."""
    reason = REASONS.get(code, "InternalError")
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"fault injected by the test proxy: {request.method} {request.path}",
        "reason": reason,
        "code": code,
    }
    headers = {"Retry-After": "1"} if code == 429 else {}
    return web.Response(status=code, text=json.dumps(status), content_type="application/json", headers=headers)
