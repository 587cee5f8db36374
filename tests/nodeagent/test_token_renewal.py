"""A projected ServiceAccount token is requested once, served from the worker's cache, and requested again once 80%
of its life is over, as the kubelet's token manager does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mljob.nodeagent import worker as worker_module
from mljob.nodeagent.apidata import TokenKey
from mljob.nodeagent.worker import Calls, PodWorker, Settings

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": {"containers": []}}
KEY = TokenKey("default", "", 3600)


async def _nothing(*args: object) -> None:
    return None


def test_a_token_is_renewed_at_80_percent_of_its_life(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = [datetime(2026, 12, 7, 12, 0, tzinfo=UTC)]
    issued: list[datetime] = []

    async def token(pod: object, key: TokenKey) -> tuple[str, datetime]:
        issued.append(clock[0])
        return f"t{len(issued)}", clock[0] + timedelta(seconds=key.seconds)

    monkeypatch.setattr(worker_module, "_now", lambda: clock[0])

    async def scenario() -> list[str]:
        calls = Calls(_nothing, _nothing, _nothing, token=token)
        settings = Settings(state_dir=tmp_path, isolation=(), base_env={}, host_ip="127.0.0.1")
        pod_worker = PodWorker(POD, "node", None, settings, calls)  # type: ignore[arg-type]
        got = [await pod_worker._token(KEY)]
        clock[0] += timedelta(seconds=2879)  # just under 80% of an hour
        got.append(await pod_worker._token(KEY))
        clock[0] += timedelta(seconds=2)  # past it
        got.append(await pod_worker._token(KEY))
        got.append(await pod_worker._token(TokenKey("default", "vault", 600)))  # another audience: its own
        return got

    assert asyncio.run(scenario()) == ["t1", "t1", "t2", "t3"]
    assert len(issued) == 3
