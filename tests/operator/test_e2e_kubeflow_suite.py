"""Kubeflow training-operator's OWN end-to-end suite, unmodified, against mljob on the session's control plane.

The ``kubeflow-training`` wheels ship it (``test/e2e``; ``make setup-kubeflow-e2e`` puts each version in an
environment of its own). tests/kubeflow/suite.py runs one version's suite, plain or gang (``GANG_SCHEDULER_NAME=
scheduler-plugins``), in its namespace, where kwok ends the pods and serves their logs (controlplane/stages/
kubeflow-e2e.yaml); tests/kubeflow/operators.py starts mljob for it (``--kubeflow all``, its webhook, and
``--gang-scheduler coscheduling`` for the gang namespace). Every test of each suite must pass, MPIJob's included
(v1 MPIJobs, converted to the stored v2beta1 by mljob's webhook). The whole report, per test: ``python
bench/kubeflow_suite.py --operator mljob`` (and ``--operator training-operator`` for training-operator v1.8.1 on the
same suites).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubeflow import suite
from tests.kubeflow.operators import OPERATORS

PLAIN_1_9 = ["jaxjob", "mpijob", "paddlejob", "pytorchjob", "tfjob", "xgboostjob"]
PLAIN_1_8 = ["mpijob", "mxjob", "paddlejob", "pytorchjob", "tfjob", "xgboostjob"]
EXPECTED = {
    ("1.9.4", False): [
        *(f"test_e2e_{kind}.py::test_sdk_e2e" for kind in PLAIN_1_9),
        "test_e2e_pytorchjob.py::test_sdk_e2e_create_from_func",
        "test_e2e_pytorchjob.py::test_sdk_e2e_create_from_image",
        "test_e2e_pytorchjob.py::test_sdk_e2e_managed_by",
    ],
    ("1.9.4", True): [f"test_e2e_{kind}.py::test_sdk_e2e_with_gang_scheduling" for kind in PLAIN_1_9],
    ("1.8.1", False): [
        *(f"test_e2e_{kind}.py::test_sdk_e2e" for kind in PLAIN_1_8),
        "test_e2e_pytorchjob.py::test_sdk_e2e_create_from_func",
        "test_e2e_pytorchjob.py::test_sdk_e2e_create_from_image",
    ],
    ("1.8.1", True): [f"test_e2e_{kind}.py::test_sdk_e2e_with_gang_scheduling" for kind in PLAIN_1_8],
}
"""Every test of each suite, by name: one missing (renamed, not collected) fails too."""


@pytest.fixture(scope="module")
def operators(e2e: Any, kubeflow_crds: list[str], coscheduler: str, tmp_path_factory: Any) -> Iterator[None]:
    """mljob for the plain namespace and for the gang one, for the module."""
    cp = e2e.control_plane
    workdir = tmp_path_factory.mktemp("kubeflow-suite")
    with contextlib.ExitStack() as stack:
        for gang, namespace in suite.NAMESPACES.items():
            suite.create_namespace(cp, namespace)
            log = stack.enter_context(OPERATORS["mljob"](cp, namespace=namespace, gang=gang, workdir=workdir))
            print(f"mljob for {namespace}: {log}")
        yield


@pytest.mark.parametrize(
    ("version", "gang"), list(EXPECTED), ids=[f"{v}-{'gang' if g else 'plain'}" for v, g in EXPECTED]
)
def test_kubeflows_own_suite_passes_against_mljob(e2e: Any, operators: None, version: str, gang: bool, tmp_path: Path):
    run = suite.run(e2e.control_plane, version, gang=gang, workdir=tmp_path, mpi=True)
    outcomes = {o.test: o.outcome for o in run.ran()}
    failures = {o.test: o.reason or o.message for o in run.ran() if o.outcome != "passed"}
    assert outcomes == dict.fromkeys(EXPECTED[(version, gang)], "passed"), (failures, run.log)
