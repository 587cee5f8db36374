"""Fixtures for the operator end to end: the emulator world (shared or private) and the cluster backend.

Most scenarios share one emulator and one operator process per session (job names are unique),
which keeps the suite fast; scenarios that kill the operator, inject faults or count requests
get a private world. ``pytest -m cluster`` runs the backend-agnostic scenarios on the cluster in
``KUBECONFIG`` as well (and only then: a plain run never touches a real cluster).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Backend, ClusterBackend, EmulatorBackend, History, OperatorProcess

from mljob.crd import crd
from mljob.testing import EmulatorThread, Kubelet, RunForever


class EmulatedWorld:
    """An emulator thread, its kubelet, the MLJob CRD, and the real operator as a subprocess."""

    def __init__(self, tmp: Path, **kubelet: Any) -> None:
        self.tmp = tmp
        self.kubelet_options = {"default": RunForever(), "termination_delay": 0.1, **kubelet}
        self.emu = EmulatorThread()
        self.kubelet: Kubelet | None = None
        self.operator: OperatorProcess | None = None
        self.backend: EmulatorBackend | None = None
        self.history = History()

    def start(self, operator: bool = True) -> EmulatedWorld:
        self.emu.start()
        self.emu.call(self.emu.emulator.store.subscribe, self.history.listen)
        self.emu.create("customresourcedefinitions", crd())
        self.kubelet = Kubelet(self.emu.emulator, **self.kubelet_options)
        kubelet = self.kubelet
        self.emu.call(lambda: asyncio.ensure_future(kubelet.start()))
        self.backend = EmulatorBackend(self.emu, kubelet)
        kubeconfig = self.emu.kubeconfig(self.tmp / "kubeconfig")
        self.operator = OperatorProcess(kubeconfig, "default", self.tmp / "operator.log")
        if operator:
            self.operator.start()
        return self

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        if self.kubelet is not None:
            kubelet = self.kubelet
            self.emu.call(lambda: asyncio.ensure_future(kubelet.stop()))
        self.emu.stop()

    def on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.emu.call(fn, *args, **kwargs)

    @property
    def emulator(self) -> Any:
        return self.emu.emulator


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


def _dump_on_failure(request: pytest.FixtureRequest, world: EmulatedWorld) -> None:
    if request.node.stash.get(FAILED, False) and world.operator is not None:
        print(f"----- operator log (tail) for {request.node.name} -----")
        print(world.operator.log()[-8000:])


@pytest.fixture(scope="session")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedWorld]:
    world = EmulatedWorld(tmp_path_factory.mktemp("shared")).start()
    yield world
    world.stop()
    assert not world.history.violations, world.history.violations


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., EmulatedWorld]]:
    """A private world per test: ``world()`` starts it (kubelet options as keywords)."""
    made: list[EmulatedWorld] = []

    def make(operator: bool = True, **kubelet: Any) -> EmulatedWorld:
        w = EmulatedWorld(tmp_path / f"world{len(made)}", **kubelet)
        (tmp_path / f"world{len(made)}").mkdir()
        made.append(w)
        return w.start(operator=operator)

    yield make
    for w in made:
        _dump_on_failure(request, w)
        w.stop()
    for w in made:
        assert not w.history.violations, w.history.violations


def _cluster_selected(config: pytest.Config) -> bool:
    return "cluster" in (config.option.markexpr or "") and bool(os.environ.get("KUBECONFIG"))


@pytest.fixture(scope="session")
def cluster_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterBackend, OperatorProcess]]:
    backend = ClusterBackend(f"mljob-e2e-{uuid.uuid4().hex[:6]}")
    backend.setup()
    tmp = tmp_path_factory.mktemp("cluster")
    operator = OperatorProcess(Path(os.environ["KUBECONFIG"]), backend.namespace, tmp / "operator.log").start()
    yield backend, operator
    operator.stop()
    backend.teardown()


@pytest.fixture(params=["emulator", pytest.param("cluster", marks=pytest.mark.cluster)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The same scenario on the emulator, and with ``-m cluster`` and KUBECONFIG on a real cluster."""
    if request.param == "cluster":
        if not _cluster_selected(request.config):
            pytest.skip("needs -m cluster and KUBECONFIG pointing at a real cluster")
        yield request.getfixturevalue("cluster_world")[0]
        return
    shared: EmulatedWorld = request.getfixturevalue("shared_world")
    assert shared.backend is not None
    yield shared.backend
    _dump_on_failure(request, shared)
    assert not shared.history.violations, shared.history.violations
