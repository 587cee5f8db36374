"""Fault injection and request accounting."""

import asyncio
import time

import aiohttp
import pytest

from mljob.testing import KubeEmulator

pytestmark = pytest.mark.asyncio
CMS = "/api/v1/namespaces/default/configmaps"


async def test_error_rate_per_verb(api, emu):
    emu.faults.error_rate("create", 0.5, codes=(500, 409, 429))
    statuses = [(await api.post(CMS, {"metadata": {"name": f"c{i}"}}))[0] for i in range(200)]
    failed = [s for s in statuses if s != 201]
    assert 60 < len(failed) < 140
    assert set(failed) == {500, 409, 429}
    assert emu.stats.injected == len(failed)
    assert emu.store.count("configmaps") == statuses.count(201)
    assert (await api.get(CMS))[0] == 200  # other verbs are unaffected
    emu.faults.clear()
    assert (await api.post(CMS, {"metadata": {"name": "ok"}}))[0] == 201


async def test_fail_next_with_retry_after(api, emu):
    emu.faults.fail_next("patch", resource="configmaps", code=429, retry_after=2, times=2)
    emu.create("configmaps", {"metadata": {"name": "c"}})
    async with api.session.patch(
        f"{CMS}/c", json={"data": {"a": "1"}}, headers={"Content-Type": "application/merge-patch+json"}
    ) as rsp:
        body = await rsp.json()
        assert rsp.status == 429
        assert rsp.headers["Retry-After"] == "2"
    assert (body["kind"], body["reason"], body["details"]["retryAfterSeconds"]) == ("Status", "TooManyRequests", 2)
    assert (await api.merge(f"{CMS}/c", {"data": {"a": "1"}}))[0] == 429
    assert (await api.merge(f"{CMS}/c", {"data": {"a": "1"}}))[0] == 200
    emu.faults.fail_next("patch", resource="pods", code=500)  # scoped: configmaps are unaffected
    assert (await api.merge(f"{CMS}/c", {"data": {"a": "2"}}))[0] == 200
    emu.faults.fail_next("get", name="c", code=503)
    assert (await api.get(f"{CMS}/c"))[0] == 503
    assert (await api.get(f"{CMS}/c"))[0] == 200


async def test_latency(api, emu):
    emu.faults.latency_by_verb["get"] = 0.1
    started = time.monotonic()
    await api.get(CMS)  # a list: no added latency
    await api.get("/api/v1/namespaces/default")
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 2.0


async def test_request_counting(api, emu):
    emu.create("configmaps", {"metadata": {"name": "c"}})
    await api.get(CMS)
    await api.get(f"{CMS}/c")
    await api.merge(f"{CMS}/c", {"data": {"a": "1"}})
    await api.post(CMS, {"metadata": {"name": "c"}})  # 409, still counted
    await api.get("/api/v1")
    await api.watch(CMS, limit=1, timeoutSeconds=0.05)
    stats = emu.stats
    assert stats.counts[("list", "configmaps")] == 1
    assert stats.counts[("get", "configmaps")] == 1
    assert stats.counts[("patch", "configmaps")] == 1
    assert stats.counts[("create", "configmaps")] == 1
    assert stats.counts[("discovery", "/api/v1")] == 1
    assert stats.counts[("watch", "configmaps")] == 1
    assert stats.total() == 4  # watches and discovery are standing costs, excluded by default
    assert stats.total("watch") == 1
    assert stats.total(resource="configmaps", exclude=()) == 5
    assert stats.statuses[409] == 1
    assert stats.watch_events == 1  # the initial ADDED
    moment = time.monotonic()
    assert stats.since(moment) == []
    await api.get(CMS)
    assert [(r.verb, r.resource, r.status) for r in stats.since(moment)] == [("list", "configmaps", 200)]
    stats.reset()
    assert stats.total() == 0


async def test_status_subresource_counts_under_its_own_label(api, emu):
    emu.create("pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    await api.merge("/api/v1/namespaces/default/pods/p/status", {"status": {"phase": "Running"}})
    assert emu.stats.counts[("patch", "pods/status")] == 1
    assert emu.stats.total("patch", "pods") == 1


async def test_cut_watches_every():
    async with KubeEmulator() as emu, aiohttp.ClientSession(emu.url) as session:
        emu.cut_watches_every(0.05, abort=False)
        reconnects = 0
        for _ in range(3):
            async with session.get(CMS, params={"watch": "true", "resourceVersion": str(emu.store.rv)}) as rsp:
                await asyncio.wait_for(rsp.read(), 2)
                reconnects += 1
        emu.cut_watches_every(None)
        assert reconnects == 3
