"""The client's log reading and the CLI's table helpers, without a cluster (the verbs run on one elsewhere)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest

from mljob.cli.verbs import table
from mljob.client import Client, ClientError
from mljob.core.text import age
from mljob.plugins import load_plugins


class Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, size: int) -> Any:
        for i in range(0, len(self.data), 3):  # small chunks: lines arrive split across them
            yield self.data[i : i + 3]


def pod(role: str, index: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"j-{role}-{index}",
            "labels": {"mljob.io/replica-type": role, "mljob.io/replica-index": str(index)},
        },
        "spec": {"containers": [{"name": "istio-proxy"}, {"name": "pytorch"}]},
    }


class Core:
    def __init__(self, logs: dict[str, bytes], refuse: frozenset[str] = frozenset()) -> None:
        self.logs, self.refuse = logs, refuse
        self.asked: list[tuple[str, str]] = []

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, **_: Any) -> Stream:
        self.asked.append((name, container))
        if name in self.refuse:
            raise kubernetes.client.ApiException(status=500, reason="Internal Server Error")
        return Stream(self.logs[name])


def client(core: Core, pods: list[dict[str, Any]]) -> Client:
    c = Client.__new__(Client)
    c.namespace, c.core, c._plugins, c._kubernetes = "team", core, load_plugins(), kubernetes
    c.get = lambda name, namespace=None: None  # type: ignore[method-assign,assignment,misc]
    c.pods = lambda name, namespace=None: pods  # type: ignore[method-assign,assignment,misc]
    return c


def test_every_replica_s_lines_come_prefixed_from_the_framework_s_container():
    core = Core({"j-master-0": b"epoch 1\nepoch 2\n", "j-worker-0": b"ready\nloss 0.1"})
    c = client(core, [pod("master", 0), pod("worker", 0)])
    every = [("master-0", "epoch 1"), ("master-0", "epoch 2"), ("worker-0", "ready"), ("worker-0", "loss 0.1")]
    assert list(c.logs("j")) == every
    assert {container for _, container in core.asked} == {"pytorch"}  # not the sidecar
    assert list(c.logs("j", replica="worker-0")) == [("worker-0", "ready"), ("worker-0", "loss 0.1")]
    followed = list(c.logs("j", follow=True))
    assert sorted(followed) == sorted(every)
    assert [line for who, line in followed if who == "master-0"] == ["epoch 1", "epoch 2"]  # in order per replica


def test_a_replica_whose_log_cannot_be_read_is_one_clear_error():
    c = client(Core({"j-master-0": b""}, refuse=frozenset({"j-master-0"})), [pod("master", 0)])
    with pytest.raises(ClientError, match=r"^no log for j-master-0: 500 Internal Server Error$"):
        list(c.logs("j"))


def test_age_reads_like_kubectl_and_the_table_aligns():
    now = datetime(2026, 1, 3, tzinfo=UTC)
    assert [age(t, now) for t in ("2026-01-02T23:59:15Z", "2026-01-02T23:00:00Z", "2026-01-02T06:00:00Z",
                                  "2025-12-30T00:00:00Z")] == ["45s", "60m", "18h", "4d"]  # fmt: skip
    assert age(None, now) == "<unknown>"
    assert table([["NAME", "PHASE"], ["a-long-name", "Running"]]) == "NAME          PHASE\na-long-name   Running"
