"""Broken plugins beside working ones, through the real ``mljob`` command and installed distributions.

The folder put on ``PYTHONPATH`` holds the ``testfw`` framework (cli_helpers), an entry point whose
module does not exist, one whose module raises when imported, and a plugin whose hooks raise for
jobs annotated to make them. ``mljob plugins`` must list each broken one and still exit 0; every
other job must validate, render and run for real, locally, as if they were not there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import install_fake_plugin, job_doc, write_yaml

EXPLODING = 'raise RuntimeError("this plugin needs a GPU driver")\n'
RAISING = """
from mljob import hookimpl

RAISE = "isolation.mljob.io/raise"


@hookimpl
def mljob_validate(job, framework):
    if job.metadata.annotations.get(RAISE) == "validate":
        raise ZeroDivisionError("the policy divided by zero")
    return []


@hookimpl
def mljob_mutate_pod(job, replica, pod):
    if job.metadata.annotations.get(RAISE) == "mutate":
        raise RuntimeError("the sidecar registry is unreachable")
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = install_fake_plugin(tmp_path_factory.mktemp("isolation"))
    (root / "mljob_isolation_exploding.py").write_text(EXPLODING)
    (root / "mljob_isolation_raising.py").write_text(RAISING)
    dist = root / "mljob_isolation-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mljob-isolation\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[mljob]\nexploding = mljob_isolation_exploding\nraising = mljob_isolation_raising\n"
    )
    return root


def mljob(plugin_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(plugin_dir), "COLUMNS": "200"}
    env.pop("MLJOB_DISABLE_PLUGINS", None)
    script = Path(sys.executable).parent / "mljob"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def runnable(name: str, raise_in: str | None = None) -> dict[str, Any]:
    """A testfw job whose replicas print their wiring and exit 0."""
    doc = job_doc(roles={"Chief": 1, "Worker": 2}, name=name)
    for spec in doc["spec"]["replicaSpecs"].values():
        spec["template"]["spec"]["containers"][0]["command"] = [
            "python",
            "-c",
            "import os; print('wired', os.environ['TESTFW_CONFIG'])",
        ]
    if raise_in:
        doc["metadata"]["annotations"] = {"isolation.mljob.io/raise": raise_in}
    return doc


def test_mljob_plugins_lists_every_broken_plugin_and_exits_0(plugin_dir):
    result = mljob(plugin_dir, "plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mljob-testfw 1.0" in out
    assert "broken plugin broken: ModuleNotFoundError: No module named 'mljob_no_such_module'" in out
    assert "broken plugin exploding: RuntimeError: this plugin needs a GPU driver" in out
    assert "2 plugins broken" in out
    raising = next(line for line in out.splitlines() if " raising " in line)
    assert "mljob-isolation 1.0" in raising
    assert "mljob_mutate_pod, mljob_validate" in raising


def test_mljob_run_runs_a_job_for_real_beside_broken_plugins(plugin_dir, tmp_path):
    path = write_yaml(tmp_path / "job.yaml", runnable("beside"))
    result = mljob(plugin_dir, "run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    wired = sorted(line.split("] ", 1)[1] for line in result.stdout.splitlines() if "] wired " in line)
    assert [w.split("@")[0] for w in wired] == ["wired Chief:0", "wired Worker:0", "wired Worker:1"]
    assert all("@127.0.0.1:" in w for w in wired), wired
    assert "job succeeded" in result.stdout


def test_a_hook_that_raises_fails_its_own_job_and_the_next_one_runs(plugin_dir, tmp_path):
    refused = mljob(plugin_dir, "run", str(write_yaml(tmp_path / "bad.yaml", runnable("bad", "validate"))))
    assert refused.returncode == 1
    assert "plugin 'raising' failed in mljob_validate: ZeroDivisionError: the policy divided by zero" in refused.stderr
    assert "wired" not in refused.stdout  # nothing was started
    assert "Traceback" not in refused.stderr
    good = mljob(plugin_dir, "run", str(write_yaml(tmp_path / "good.yaml", runnable("good"))))
    assert good.returncode == 0, good.stdout + good.stderr


def test_a_pod_mutation_that_raises_fails_render_of_its_own_job_only(plugin_dir, tmp_path):
    bad = mljob(plugin_dir, "render", str(write_yaml(tmp_path / "bad.yaml", runnable("bad", "mutate"))))
    assert bad.returncode == 1
    assert "failed in mljob_mutate_pod: RuntimeError: the sidecar registry is unreachable" in bad.stderr
    good = mljob(plugin_dir, "render", str(write_yaml(tmp_path / "good.yaml", runnable("good"))))
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("kind: Pod") == 3
