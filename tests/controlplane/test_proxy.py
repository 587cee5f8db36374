"""The fault-injecting proxy: forwards faithfully, fails the share of writes it is told to, cuts watches.

An aiohttp server stands in for the upstream here, so every byte that crosses is known; the end-to-end tests
use the proxy in front of the real API server.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from controlplane.proxy import FaultProxy
from controlplane.waiting import until


class Upstream:
    """A small HTTP server in its own thread: echoes requests; /watch streams a line every 50 ms."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/watch", self.watch)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, body, request.headers.get("User-Agent", "")))
        return web.json_response({"method": request.method, "body": body.decode()}, status=201, headers={"X-Up": "1"})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for i in range(200):
                await response.write(json.dumps({"type": "ADDED", "n": i}).encode() + b"\n")
                await asyncio.sleep(0.05)
        except ConnectionResetError:  # the proxy let its client go and hung up on us, as the API server sees it
            pass
        return response

    def __enter__(self) -> Upstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"User-Agent": "mljob-operator/test"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_requests_and_answers_cross_untouched(upstream):
    with FaultProxy(f"http://127.0.0.1:{upstream.port}", ssl.create_default_context()) as proxy:
        code, body, headers = call(f"{proxy.url}/api/v1/pods?limit=5", "POST", b'{"a": 1}')
    assert code == 201
    assert body == {"method": "POST", "body": '{"a": 1}'}
    assert headers["X-Up"] == "1"
    assert upstream.seen == [("POST", "/api/v1/pods?limit=5", b'{"a": 1}', "mljob-operator/test")]
    assert proxy.stats.requests == {"POST": 1}
    assert sum(proxy.stats.injected.values()) == 0


def test_the_error_rate_fails_that_share_of_writes_and_no_read_and_they_never_reach_the_server(upstream):
    with FaultProxy(
        f"http://127.0.0.1:{upstream.port}", ssl.create_default_context(), error_rate=0.25, codes=(500, 409, 429)
    ) as proxy:
        writes = [call(f"{proxy.url}/w/{i}", "PATCH", b"{}") for i in range(200)]
        reads = [call(f"{proxy.url}/r/{i}") for i in range(50)]
    failed = [(code, body) for code, body, _ in writes if code != 201]
    assert 30 <= len(failed) <= 70  # a quarter of 200, with a fixed seed
    assert {code for code, _ in failed} <= {500, 409, 429}
    assert all(body["kind"] == "Status" and body["code"] == code for code, body in failed)
    assert all(code == 200 or code == 201 for code, _, _ in reads)
    assert sum(proxy.stats.injected.values()) == len(failed)
    assert len([s for s in upstream.seen if s[0] == "PATCH"]) == 200 - len(failed)  # injected ones went nowhere


async def read_watch(url: str) -> tuple[list[dict], BaseException | None]:
    """The events a client got from a watch, and how the stream ended (None: cleanly)."""
    lines: list[dict] = []
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        try:
            async for line in response.content:
                lines.append(json.loads(line))
        except aiohttp.ClientPayloadError as error:
            return lines, error
    return lines, None


def test_a_watch_is_cut_mid_stream_after_the_set_time_and_other_requests_are_not(upstream):
    up = f"http://127.0.0.1:{upstream.port}"
    with FaultProxy(up, ssl.create_default_context(), cut_watches_after=0.5) as proxy:
        started = time.monotonic()
        lines, ended = asyncio.run(read_watch(f"{proxy.url}/watch?watch=true"))
        elapsed = time.monotonic() - started
        code, _, _ = call(f"{proxy.url}/plain")
    assert isinstance(ended, aiohttp.ClientPayloadError), ended  # broken off, not a clean end of the stream
    assert 2 <= len(lines) < 200
    assert elapsed < 5
    assert proxy.stats.watches == 1
    assert proxy.stats.cut == 1
    assert code == 201


def test_cut_watches_cuts_every_open_watch_at_once(upstream):
    async def scenario(proxy: FaultProxy) -> tuple[list[dict], BaseException | None]:
        reading = asyncio.ensure_future(read_watch(f"{proxy.url}/watch?watch=1"))
        while proxy.stats.watches < 1:
            await asyncio.sleep(0.01)
        proxy.cut_watches()
        return await reading

    with FaultProxy(f"http://127.0.0.1:{upstream.port}", ssl.create_default_context()) as proxy:
        lines, ended = asyncio.run(scenario(proxy))
    assert isinstance(ended, aiohttp.ClientPayloadError), ended
    assert len(lines) < 200
    assert proxy.stats.cut == 1


def test_a_client_that_hangs_up_mid_watch_is_let_go_quietly(upstream, caplog):
    async def hang_up(url: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            await response.content.readline()
            await response.content.readline()
        return 2  # the session closes the connection mid-stream here

    with FaultProxy(f"http://127.0.0.1:{upstream.port}", ssl.create_default_context()) as proxy:
        asyncio.run(hang_up(f"{proxy.url}/watch?watch=true"))
        until(lambda: not proxy._open, 5, "the proxy to drop the watch")
        code, _, _ = call(f"{proxy.url}/after")
    assert code == 201
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
