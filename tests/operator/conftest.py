"""Fixtures for the operator end to end, on one real control plane per test session.

The session starts the local control plane (controlplane/: etcd, kube-apiserver, controller-manager, scheduler
and kwok, built by `make controlplane`), installs the CRD and watches every pod and MLJob into a
:class:`History` that checks invariants on each committed version. Each test gets a namespace of its own:

* ``backend``: a namespace the shared operator watches (one ``mljob operator --namespace 'e2e-s-*'`` for the
  whole session, which keeps the suite fast);
* ``world()``: a namespace with an operator of its own, for scenarios that kill it, inject faults through the
  proxy, or count its requests: each such operator authenticates as its own user, so the audit log tells its
  requests from everybody else's.

``pytest -m cluster`` with KUBECONFIG runs the scenarios marked ``cluster`` on that cluster instead (pods then
run busybox with a real kubelet; kwok's triggers are not there).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import History, Kube, OperatorProcess, Watcher

from controlplane import ControlPlane, StartError
from controlplane.audit import AuditLog, Request
from controlplane.proxy import FaultProxy
from controlplane.waiting import until

SHARED = "e2e-s-"
PRIVATE = "e2e-p-"


@dataclass
class Session:
    """What every end-to-end test shares: the cluster, its admin kubeconfig, the audit log and the history."""

    kubeconfig: Path
    tmp: Path
    history: History
    watcher: Watcher
    control_plane: ControlPlane | None
    kwok: bool

    @property
    def audit(self) -> AuditLog:
        assert self.control_plane is not None, "requests are counted on the local control plane only"
        return AuditLog(self.control_plane.audit_log)

    def identity(self, user: str) -> Path:
        """A kubeconfig for ``user`` with the admin's rights, so the audit log names its requests."""
        if self.control_plane is None:
            return self.kubeconfig
        return self.control_plane.user_kubeconfig(user, groups=("system:masters",))


def _foreign_cluster(config: pytest.Config) -> bool:
    return "cluster" in (config.option.markexpr or "") and bool(os.environ.get("KUBECONFIG"))


@pytest.fixture(scope="session")
def e2e(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("e2e")
    cp: ControlPlane | None = None
    if _foreign_cluster(request.config):
        kubeconfig = Path(os.environ["KUBECONFIG"])
    else:
        cp = ControlPlane(tmp / "controlplane", log=print).start()
        kubeconfig = cp.kubeconfig
        # The placement add-ons' CRDs from the start: the garbage collector learns new kinds only on its
        # 30-second rediscovery, and a PodGroup must go with its job as soon as any other child does.
        for addon in ADDON_CRDS:
            cp.install_crds(addon)
    try:
        Kube(kubeconfig, "default").install_crd()
        history = History()
        watcher = Watcher(kubeconfig, history).start()
        yield Session(kubeconfig, tmp, history, watcher, cp, kwok=cp is not None)
        watcher.stop()
    finally:
        if cp is not None:
            cp.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scenarios on the shared operator that need no kwok cue run on any cluster: mark them ``cluster``."""
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()) and item.get_closest_marker("kwok") is None:
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()
_numbers = itertools.count()


def namespace_for(request: pytest.FixtureRequest, prefix: str) -> str:
    """A DNS label from the test's name, unique in the session."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{prefix}{next(_numbers)}-{slug}"[:63].rstrip("-")


def _dump(request: pytest.FixtureRequest, operator: OperatorProcess | None) -> None:
    if request.node.stash.get(FAILED, False) and operator is not None:
        print(f"----- operator log (tail) for {request.node.name} -----")
        print(operator.log()[-8000:])


@pytest.fixture(scope="session")
def shared_operator(e2e: Session) -> Iterator[OperatorProcess]:
    """One operator for every ``backend`` test: it watches the namespaces named ``e2e-s-*``."""
    kubeconfig = e2e.identity("e2e-shared-operator")
    operator = OperatorProcess(kubeconfig, "", e2e.tmp / "shared-operator.log", ["--namespace", f"{SHARED}*"])
    operator.start()
    yield operator
    operator.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest, e2e: Session, shared_operator: OperatorProcess) -> Iterator[Kube]:
    """A fresh namespace the shared operator acts in; checked against the history when the test ends."""
    kube = Kube(e2e.kubeconfig, namespace_for(request, SHARED), kwok=e2e.kwok)
    kube.create_namespace()
    yield kube
    _dump(request, shared_operator)
    e2e.watcher.catch_up(kube)
    violations = e2e.history.violations_in(kube.namespace)
    kube.delete_namespace()
    assert not violations, violations


@dataclass
class World:
    """A namespace with its own operator (as user ``user``), optionally behind a fault-injecting proxy."""

    kube: Kube
    operator: OperatorProcess
    user: str
    tmp: Path
    session: Session
    proxy: FaultProxy | None = None

    @property
    def history(self) -> History:
        return self.session.history

    def mark(self) -> int:
        return self.session.audit.mark()

    def requests(self, since: int = 0) -> list[Request]:
        """What this world's operator asked of the API server, as the server's audit log has it."""
        return self.session.audit.requests(since, user=self.user)

    def catch_up(self) -> None:
        self.session.watcher.catch_up(self.kube)


ADDON_CRDS = ("kueue", "scheduler-plugins", "volcano")
KUBEFLOW_CRDS = Path(__file__).resolve().parents[2] / "crds" / "kubeflow"


@pytest.fixture(scope="session")
def kubeflow_crds(e2e: Session) -> list[str]:
    """mljob's CRDs of Kubeflow's seven kinds (crds/kubeflow/), Established; they stay (a CRD is deleted slowly)."""
    cp = e2e.control_plane
    if cp is None:
        pytest.skip("installs CRDs cluster-wide: only on the local control plane")
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=mljob-e2e", "-k", str(KUBEFLOW_CRDS))
    names = [f"{plural}.kubeflow.org" for plural in ("tfjobs", "pytorchjobs", "mxjobs", "xgboostjobs", "jaxjobs",
                                                      "paddlejobs", "mpijobs")]  # fmt: skip

    def established() -> bool:  # not `kubectl wait`: it fails on a CRD whose status the server has not written yet
        path = '{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Established")].status} {end}'
        try:
            listed = cp.kubectl("get", "crd", "-o", f"jsonpath={path}")
        except StartError:  # so does this filter while any CRD's status.conditions is still null: not yet
            return False
        found = dict(pair.split("=", 1) for pair in listed.split())
        return all(found.get(n) == "True" for n in names)

    until(established, 60, "Kubeflow's CRDs to be Established")
    return names


@pytest.fixture(scope="session")
def kueue(e2e: Session, kubeflow_crds: list[str]) -> ControlPlane:
    """The session's control plane with Kueue running (started by the first test that asks), Kubeflow's CRDs
    installed first: Kueue's kubeflow.org/pytorchjob and tfjob integrations need them when it starts."""
    cp = e2e.control_plane
    if cp is None:
        pytest.skip("Kueue is started on the local control plane; install it in your cluster to test it there")
    if "kueue" not in cp.procs:
        cp.start_kueue()
    return cp


@pytest.fixture(scope="session")
def coscheduler(e2e: Session) -> str:
    """The session's control plane with scheduler-plugins' scheduler running; returns its scheduler name."""
    cp = e2e.control_plane
    if cp is None:
        pytest.skip("scheduler-plugins is started on the local control plane")
    if "scheduler-plugins" not in cp.procs:
        return cp.start_coscheduler()
    return "scheduler-plugins-scheduler"


@pytest.fixture(scope="session")
def volcano_crds(e2e: Session) -> list[str]:
    """Volcano's CRDs, installed in the session's API server at its start (no Volcano scheduler: it cannot be
    built here)."""
    cp = e2e.control_plane
    if cp is None:
        pytest.skip("Volcano's CRDs are installed on the local control plane")
    return cp.install_crds("volcano")  # already there: applying again is a no-op that returns their names


@pytest.fixture
def world(request: pytest.FixtureRequest, e2e: Session, tmp_path: Path) -> Iterator[Callable[..., World]]:
    """A private world per call: ``world(operator=False, proxy=dict(error_rate=...))``."""
    made: list[World] = []

    def make(operator: bool = True, proxy: dict[str, Any] | None = None) -> World:
        assert e2e.control_plane is not None, "a private world needs the local control plane"
        n = len(made)
        kube = Kube(e2e.kubeconfig, namespace_for(request, PRIVATE), kwok=e2e.kwok)
        kube.create_namespace()
        user = f"e2e-operator-{kube.namespace}"[:63]
        folder = tmp_path / f"world{n}"
        folder.mkdir()
        kubeconfig = e2e.control_plane.user_kubeconfig(user, ("system:masters",), folder / "operator.kubeconfig")
        fault_proxy = None
        if proxy is not None:
            context = _user_context(e2e.control_plane, kubeconfig)
            fault_proxy = FaultProxy(e2e.control_plane.server, context, **proxy).start()
            kubeconfig = folder / "proxy.kubeconfig"
            kubeconfig.write_text(_plain_kubeconfig(fault_proxy.url))
        process = OperatorProcess(kubeconfig, kube.namespace, folder / "operator.log")
        w = World(kube, process, user, folder, e2e, fault_proxy)
        made.append(w)
        if operator:
            process.start()
        return w

    yield make
    for w in made:
        _dump(request, w.operator)
        w.operator.stop()
        if w.proxy is not None:
            w.proxy.stop()
    for w in made:
        w.catch_up()
        violations = e2e.history.violations_in(w.kube.namespace)
        w.kube.delete_namespace()
        assert not violations, violations


def _user_context(cp: ControlPlane, kubeconfig: Path) -> Any:
    """TLS to the API server as the identity in ``kubeconfig`` (its client certificate)."""
    import ssl

    import yaml

    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    context = ssl.create_default_context(cafile=str(cp.ca))
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return context


def _plain_kubeconfig(server: str) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": server}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        }
    )
