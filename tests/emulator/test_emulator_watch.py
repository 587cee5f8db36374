"""Watch streams: resumption, initial state, selector transitions, 410, timeouts, bookmarks, cuts."""

import asyncio
import json

import aiohttp
import pytest

from mljob.testing import KubeEmulator

pytestmark = pytest.mark.asyncio
CMS = "/api/v1/namespaces/default/configmaps"


def cm(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


def summary(events):
    return [(e["type"], e["object"]["metadata"].get("name")) for e in events]


async def test_watch_resumes_after_resource_version(api, emu):
    emu.create("configmaps", cm("before"))
    _, listed = await api.get(CMS)
    rv = listed["metadata"]["resourceVersion"]
    emu.create("configmaps", cm("after"))
    emu.patch("configmaps", "after", {"data": {"k": "v"}})
    emu.delete("configmaps", "after")
    events = await api.watch(CMS, limit=3, resourceVersion=rv)
    assert summary(events) == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)
    assert rvs[0] > int(rv)


async def test_watch_without_resource_version_starts_with_current_state(api, emu):
    emu.create("configmaps", cm("a"))
    emu.create("configmaps", cm("b"))

    async def later():
        await asyncio.sleep(0.05)
        emu.create("configmaps", cm("c"))

    task = asyncio.create_task(later())
    events = await api.watch(CMS, limit=3)
    await task
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


async def test_watch_live_events_and_namespace_filter(api, emu):
    emu.store.create_namespace("other")
    rv = emu.store.rv

    async def writer():
        await asyncio.sleep(0.05)
        emu.create("configmaps", cm("elsewhere"), "other")
        emu.create("configmaps", cm("here"))

    task = asyncio.create_task(writer())
    events = await api.watch(CMS, limit=1, resourceVersion=rv)
    await task
    assert summary(events) == [("ADDED", "here")]
    everywhere = await api.watch("/api/v1/configmaps", limit=2, resourceVersion=rv)
    assert summary(everywhere) == [("ADDED", "elsewhere"), ("ADDED", "here")]


async def test_label_selector_watch_sees_objects_enter_and_leave(api, emu):
    rv = emu.store.rv
    emu.create("configmaps", cm("x", role="worker"))
    emu.patch("configmaps", "x", {"data": {"a": "1"}})
    emu.patch("configmaps", "x", {"metadata": {"labels": {"role": "master"}}})
    emu.patch("configmaps", "x", {"data": {"a": "2"}})  # invisible: does not match before or after
    emu.patch("configmaps", "x", {"metadata": {"labels": {"role": "worker"}}})
    emu.delete("configmaps", "x")
    events = await api.watch(CMS, limit=5, resourceVersion=rv, labelSelector="role=worker")
    assert summary(events) == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "x"), ("DELETED", "x")]


async def test_too_old_resource_version_is_410_gone_in_stream():
    async with KubeEmulator(history_limit=5) as emu, aiohttp.ClientSession(emu.url) as session:
        first = emu.create("configmaps", cm("c0"))
        for i in range(1, 10):
            emu.create("configmaps", cm(f"c{i}"))
        params = {"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"]}
        async with session.get(CMS, params=params) as rsp:
            assert rsp.status == 200
            lines = [json.loads(line) for line in (await rsp.read()).splitlines() if line.strip()]
        assert len(lines) == 1
        assert lines[0]["type"] == "ERROR"
        assert lines[0]["object"]["code"] == 410
        assert lines[0]["object"]["reason"] == "Expired"
        recent = str(emu.store.rv - 3)
        async with session.get(
            CMS, params={"watch": "true", "resourceVersion": recent}, timeout=aiohttp.ClientTimeout(total=0.3)
        ) as rsp:
            got = []

            async def read_all():
                async for line in rsp.content:
                    got.append(json.loads(line)["object"]["metadata"]["name"])

            with pytest.raises(asyncio.TimeoutError):
                await read_all()
        assert got == ["c7", "c8", "c9"]


async def test_timeout_seconds_ends_the_stream(api, emu):
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await api.watch(CMS, limit=100, resourceVersion=emu.store.rv, timeoutSeconds=0.2)
    assert events == []
    assert 0.15 < loop.time() - started < 2.0
    assert emu.open_watches == 0


async def test_bookmarks_and_initial_events_end():
    async with KubeEmulator(bookmark_interval=0.05) as emu, aiohttp.ClientSession(emu.url) as session:
        emu.create("configmaps", cm("a"))
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "0.2",
        }
        async with session.get(CMS, params=params) as rsp:
            lines = [json.loads(line) for line in (await rsp.read()).splitlines() if line.strip()]
        assert lines[0]["type"] == "ADDED"
        assert lines[1]["type"] == "BOOKMARK"
        assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert lines[1]["object"]["metadata"]["resourceVersion"] == str(emu.store.rv)
        assert {line["type"] for line in lines[2:]} == {"BOOKMARK"}
        assert emu.stats.bookmarks == len(lines) - 1


@pytest.mark.parametrize("abort", [True, False])
async def test_cut_watches(emu, abort):
    async with aiohttp.ClientSession(emu.url) as session:

        async def consume():
            async with session.get(CMS, params={"watch": "true", "resourceVersion": str(emu.store.rv)}) as rsp:
                async for _ in rsp.content:
                    pass

        task = asyncio.create_task(consume())
        await emu.wait_for(lambda: emu.open_watches == 1)
        assert emu.cut_watches(abort=abort) == 1
        if abort:
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(task, 2)
        else:
            await asyncio.wait_for(task, 2)
        assert emu.open_watches == 0


async def test_client_disconnect_releases_the_watcher(emu):
    async with aiohttp.ClientSession(emu.url) as session:
        rsp = await session.get(CMS, params={"watch": "true", "resourceVersion": str(emu.store.rv)})
        await emu.wait_for(lambda: emu.open_watches == 1)
        rsp.close()
    await emu.wait_for(lambda: emu.open_watches == 0, timeout=2)
    await asyncio.sleep(0.05)
    assert emu.store.all_watchers() == []
