"""The node agent against the real local control plane: one control plane per session, agents as subprocesses.

The control plane keeps one kwok Node (kwok manages only Nodes annotated as its own, so it leaves the agent's
alone); each agent registers a Node of its own and the tests pin their pods to it by ``nodeName`` or
``nodeSelector``. The agent runs as the real ``mljob node-agent`` command, with a serving certificate from the
cluster's CA (so the API server relays ``kubectl logs`` to it), short restart back-offs and lease intervals.
A pod's processes are found by a marker variable in their environment (a container's processes inherit it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import TIMEOUT, AgentProcess, Env, core, crd_established, extensions, start_agent

from controlplane import ControlPlane, Node
from controlplane.waiting import until
from mljob.core.crd import crd

MOUNT_POINTS = ("/data", "/shared", "/out", "/flag", "/work-in", "/runs")
"""The mountPaths the tests use: a bind needs its mount point on the host, so the agent makes missing ones there
(docs/node-agent.md); those the session made are removed when it ends."""


@pytest.fixture(scope="session", autouse=True)
def _mount_points() -> Iterator[None]:
    made = [Path(p) for p in MOUNT_POINTS if not Path(p).exists()]
    yield
    for path in made:
        with contextlib.suppress(OSError):
            path.rmdir()  # only when empty


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if os.geteuid() != 0:
        pytest.skip("the node agent's containers need root (PID and mount namespaces)")
    tmp = tmp_path_factory.mktemp("nodeagent")
    with ControlPlane(tmp / "controlplane", nodes=(Node("kwok-node-0"),), log=print).start() as cp:
        api = core(cp)
        with contextlib.suppress(Exception):
            extensions(cp).create_custom_resource_definition(crd())
        until(lambda: crd_established(cp), TIMEOUT, "the MLJob CRD")
        api.api_client.close()
        yield cp


_numbers = itertools.count()


@pytest.fixture(scope="module")
def agent(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """One agent per test module, with a Node named after the module."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.split(".")[-1].lower()).strip("-")
    process = start_agent(cluster, tmp_path_factory.mktemp("agent"), f"agent-{slug}"[:63])
    yield process
    process.stop()
    print(f"----- agent log (tail) -----\n{process.log()[-6000:]}")


@pytest.fixture
def env(cluster: ControlPlane, agent: AgentProcess, request: pytest.FixtureRequest) -> Iterator[Env]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    namespace = f"na-{next(_numbers)}-{slug}"[:63].rstrip("-")
    e = Env(cluster, namespace, agent.node)
    e.api.create_namespace({"metadata": {"name": namespace}})
    yield e
    e.api.delete_namespace(namespace)


@pytest.fixture(scope="session", autouse=True)
def _stale_test_networks() -> None:
    """Cluster network namespaces that killed test runs left behind (named mljob-test-<what>-<pid>): removed."""
    from mljob.nodeagent.network import NETNS_DIR, ClusterNetwork, missing_privileges

    if missing_privileges() is not None or not NETNS_DIR.is_dir():
        return
    for path in NETNS_DIR.glob("mljob-test-*"):
        found = re.fullmatch(r"mljob-test-[a-z]+-(\d+)", path.name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            ClusterNetwork(path.name).destroy()
