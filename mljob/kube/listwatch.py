"""The list-then-watch loop (a client-go informer's) that the operator, the node agent and the web UI share.

Apart from :mod:`mljob.kube.api` because it is a policy over its requests, not a request: paging, resuming a
watch from the last resourceVersion, relisting on 410, backing off while the API server is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from mljob.kube.api import Api, ApiError, Gone

logger = logging.getLogger("mljob.kube")

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
    trimmed by ``keep`` before the next arrives, instead of one response of every pod's full spec held at once
    (bench/README.md, "Memory").
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
