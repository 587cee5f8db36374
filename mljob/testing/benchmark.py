"""Measure the emulator's create throughput: ``python -m mljob.testing.benchmark``.

Benchmarks of the operator run on this emulator, so its own cost must stay flat as objects
accumulate. The HTTP client runs in a subprocess (as a real operator would) and keeps a watch
stream open, so the numbers include watch fan-out and JSON encoding, not only the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from mljob.testing.emulator import KubeEmulator

_CLIENT = r"""
import asyncio, json, sys, time
import aiohttp

async def main(url, count, concurrency, rv):
    path = "/api/v1/namespaces/default/configmaps"
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency + 2)) as s:
        seen = 0
        async def watch():
            nonlocal seen
            async with s.get(path, params={"watch": "true", "resourceVersion": rv}) as rsp:
                async for line in rsp.content:
                    seen += 1
                    if seen >= count:
                        return
        watcher = asyncio.create_task(watch())
        queue = list(range(count))
        statuses = []
        async def worker():
            while queue:
                i = queue.pop()
                async with s.post(path, json={"metadata": {"name": f"bench-{i}", "labels": {"bench": "yes"}},
                                              "data": {"i": str(i)}}) as rsp:
                    statuses.append(rsp.status)
                    await rsp.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        created = time.perf_counter() - started
        await asyncio.wait_for(watcher, 60)
        watched = time.perf_counter() - started
        print(json.dumps({"created_s": created, "watched_s": watched, "ok": statuses.count(201)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


async def measure(existing: int, count: int, concurrency: int) -> dict[str, Any]:
    """Create ``count`` ConfigMaps over HTTP with ``existing`` objects already stored."""
    async with KubeEmulator() as emu:
        for i in range(existing):
            emu.store.create("configmaps", {"metadata": {"name": f"pre-{i}", "labels": {"i": str(i % 7)}}})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            emu.url,
            str(count),
            str(concurrency),
            str(emu.store.rv),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        started = time.perf_counter()
        for i in range(count):
            emu.store.create("configmaps", {"metadata": {"name": f"direct-{i}"}, "data": {"i": str(i)}})
        direct = time.perf_counter() - started
        started = time.perf_counter()
        listed = emu.store.list("configmaps", "default", label_selector="i=3")
        list_s = time.perf_counter() - started
    return {
        "existing": existing,
        "http_creates_per_s": round(count / result["created_s"]),
        "http_creates_watched_per_s": round(count / result["watched_s"]),
        "store_creates_per_s": round(count / direct),
        "selector_list_ms": round(list_s * 1000, 1),
        "selector_list_items": len(listed),
        "ok": result["ok"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--existing", type=int, nargs="*", default=[50, 5000])
    args = parser.parse_args()
    for existing in args.existing:
        print(json.dumps(asyncio.run(measure(existing, args.count, args.concurrency))))


if __name__ == "__main__":
    main()
