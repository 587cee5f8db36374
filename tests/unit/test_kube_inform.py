"""mljob.kube.inform: the list-then-watch loop the operator, the node agent and the web UI share.

Against a scripted HTTP server: a failed list is reported and retried; a list comes in pages, trimmed as each
arrives; a watch resumes from its last version (a bookmark's too) after a stream cut mid-line, without a new
list; a 410 inside the stream lists again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from mljob.kube import SYNC, Api, ApiError, Credentials, inform


def pod(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}, "spec": {"big": "x" * 100}}


def line(event: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event, "object": obj}).encode() + b"\n"


class Script:
    """The API server's answers, in order, and what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.lists = 0
        self.watches = 0

    async def pods(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if query.get("watch") != "1":
            self.lists += 1
            self.asked.append(f"list continue={query.get('continue', '')} limit={query.get('limit')}")
            if self.lists == 1:
                return web.json_response({"kind": "Status", "message": "etcd is away"}, status=500)
            if self.lists == 2:
                return web.json_response({"metadata": {"resourceVersion": "10", "continue": "c1"},
                                          "items": [pod("a", 5), pod("b", 6)]})  # fmt: skip
            if self.lists == 3:
                return web.json_response({"metadata": {"resourceVersion": "10"}, "items": [pod("c", 7)]})
            return web.json_response({"metadata": {"resourceVersion": "20"}, "items": [pod("a", 15)]})
        self.watches += 1
        self.asked.append(f"watch from {query.get('resourceVersion')} selector={query.get('labelSelector')}")
        response = web.StreamResponse()
        await response.prepare(request)
        if self.watches == 1:
            await response.write(line("ADDED", pod("d", 11)))
            await response.write(line("BOOKMARK", {"metadata": {"resourceVersion": "12"}}))
            await response.write(b'{"type": "MODIFIED", "obj')  # cut mid-line, as a dropped connection is
            assert request.transport is not None
            request.transport.close()
            return response
        if self.watches == 2:
            await response.write(line("ERROR", {"kind": "Status", "code": 410, "message": "too old"}))
            return response
        await asyncio.sleep(3600)  # the last watch stays open until the test is done
        return response


def test_inform_lists_in_pages_resumes_cut_watches_and_lists_again_on_410():
    script = Script()
    failures: list[ApiError] = []

    async def main() -> list[tuple[str, Any]]:
        app = web.Application()
        app.router.add_get("/api/v1/pods", script.pods)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        seen: list[tuple[str, Any]] = []
        try:
            async with Api(Credentials(server=f"http://127.0.0.1:{port}")) as api:

                def keep(obj: dict[str, Any]) -> dict[str, Any] | None:
                    return None if obj["metadata"]["name"] == "b" else {"metadata": obj["metadata"]}

                stream = inform(
                    api, "/api/v1/pods", {"labelSelector": "mljob.io/job-name"}, page=2, keep=keep,
                    failed=failures.append,
                )  # fmt: skip
                async for event, payload in stream:
                    seen.append((event, [p["metadata"]["name"] for p in payload] if event == SYNC else payload))
                    if len(seen) == 3:
                        break
                await stream.aclose()
        finally:
            await runner.cleanup()
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert [e for e, _ in seen] == [SYNC, "ADDED", SYNC]
    assert seen[0][1] == ["a", "c"]  # both pages, "b" left out by keep, the spec trimmed
    assert seen[1][1]["metadata"]["name"] == "d"  # a watch event comes whole
    assert seen[1][1]["spec"]
    assert seen[2][1] == ["a"]
    assert [f.status for f in failures] == [500]
    assert (
        script.asked
        == [
            "list continue= limit=2",  # refused: reported, then retried after a back-off
            "list continue= limit=2",
            "list continue=c1 limit=2",
            "watch from 10 selector=mljob.io/job-name",
            "watch from 12 selector=mljob.io/job-name",  # resumed after the cut, from the bookmark, with no list
            "list continue= limit=2",  # 410 in the stream: list again
            "watch from 20 selector=mljob.io/job-name",
        ][: len(script.asked)]
    )
    assert len(script.asked) >= 6
