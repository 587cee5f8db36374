"""Builders for the ``mljob`` command's tests: a fake plugin distribution and job documents.

The commands discover plugins through entry points, so the tests install a plugin the real
way: a fake distribution (``mljob_testfw-1.0.dist-info`` with an ``entry_points.txt``) in a
temporary folder put on ``sys.path`` (and on ``PYTHONPATH`` for subprocess tests). It registers
the ``testfw`` framework and one entry point that cannot be imported, so the broken-plugin path
is exercised too. No global flags, no mocks of the plugin manager.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import yaml

TESTFW_MODULE = '''
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from mljob import Cluster, Framework, MLJob, Replica, Role, hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str = "sync"


class TestFw(Framework):
    """A small framework shaped like TensorFlow: one chief at most, workers, parameter servers."""

    name = "testfw"
    roles = (
        Role("Chief", default_port=2222, leader=True, max_replicas=1),
        Role("Worker", default_port=2222),
        Role("PS", default_port=2223, runs_until_stopped=True),
    )
    options_model = Options
    reserved_env = frozenset({"TESTFW_CONFIG"})
    port_name = "testfw-port"
    version = "1.0"

    def env(self, job: MLJob, replica: Replica, cluster: Cluster) -> Mapping[str, str]:
        return {"TESTFW_CONFIG": f"{replica.role}:{replica.index}@{cluster.address(replica)}"}


@hookimpl
def mljob_register_frameworks(register):
    register(TestFw())
'''


def install_fake_plugin(root: Path) -> Path:
    """Write the ``mljob-testfw`` distribution under ``root``; returns the folder to put on the path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mljob_testfw.py").write_text(textwrap.dedent(TESTFW_MODULE))
    dist = root / "mljob_testfw-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mljob-testfw\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mljob]\ntestfw = mljob_testfw\nbroken = mljob_no_such_module\n")
    return root


def template(container: str = "testfw", **fields: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": container, "image": "python:3.11", **fields}]}}


def job_doc(
    framework: str = "testfw",
    roles: dict[str, int] | None = None,
    name: str = "mnist",
    container: str | None = None,
) -> dict[str, Any]:
    """A valid MLJob document (plain data, as a user writes it)."""
    counts = roles if roles is not None else {"Chief": 1, "Worker": 3}
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {
            "framework": framework,
            "replicaSpecs": {
                role: {"replicas": n, "template": template(container or framework)} for role, n in counts.items()
            },
        },
    }


def write_yaml(path: Path, *docs: Any) -> Path:
    path.write_text(yaml.safe_dump_all([copy.deepcopy(d) for d in docs], sort_keys=False))
    return path
