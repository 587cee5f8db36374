"""Fixtures for the emulator's own tests: a running emulator and a tiny JSON HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mljob.testing import KubeEmulator, crd_manifest

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"


class Api:
    """Raw HTTP calls returning (status, parsed body), so tests see exactly what a client sees."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", **params: Any
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(
            method, path, data=data, headers=headers, params={k: str(v) for k, v in params.items()}
        ) as rsp:
            text = await rsp.text()
            return rsp.status, json.loads(text) if text and rsp.content_type == "application/json" else text

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.request("GET", path, **params)

    async def post(self, path: str, body: Any, **params: Any) -> tuple[int, Any]:
        return await self.request("POST", path, body, **params)

    async def put(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.request("PUT", path, body)

    async def merge(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def jsonpatch(self, path: str, ops: list[dict[str, Any]]) -> tuple[int, Any]:
        return await self.request("PATCH", path, ops, content_type="application/json-patch+json")

    async def delete(self, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        return await self.request("DELETE", path, body, **params)

    async def watch(self, path: str, *, limit: int, timeout: float = 3.0, **params: Any) -> list[dict[str, Any]]:
        """Collect up to ``limit`` watch events (or until the stream ends)."""
        events: list[dict[str, Any]] = []
        query = {"watch": "true", **{k: str(v) for k, v in params.items()}}
        async with self.session.get(path, params=query, timeout=aiohttp.ClientTimeout(total=timeout)) as rsp:
            assert rsp.status == 200
            async for line in rsp.content:
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= limit:
                    break
        return events


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator() as emulator:
        emulator.create("customresourcedefinitions", crd_manifest("example.com", "widgets", "Widget"))
        yield emulator


@pytest_asyncio.fixture
async def api(emu: KubeEmulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(emu.url) as session:
        yield Api(session)


@pytest.fixture
def widget() -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"app": "a"}},
        "spec": {"size": 1},
    }
