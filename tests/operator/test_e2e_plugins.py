"""Plugins in the real operator: one that cannot be imported, and the TensorBoard plugin that adds a sidecar.

A plugin that raises for one job is tested in test_e2e_run_policy.py (e2e_plugins/mljob_e2e_raising.py,
on every operator of the suite); here an operator starts with an entry point whose module fails when
imported, which it must report and otherwise ignore.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from harness import Backend, E2EJob, Role, Run, conditions

UNIMPORTABLE = 'raise RuntimeError("the e2e plugin cannot be imported")\n'


def unimportable_plugin(folder: Path) -> Path:
    """A distribution whose entry point names a module that raises on import, and would have provided ``ghost``."""
    folder.mkdir()
    (folder / "mljob_e2e_unimportable.py").write_text(UNIMPORTABLE)
    dist = folder / "mljob_e2e_unimportable-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mljob-e2e-unimportable\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mljob]\ne2e-unimportable = mljob_e2e_unimportable\n")
    return folder


def test_an_unimportable_plugin_is_reported_and_every_other_framework_runs(world, monkeypatch, tmp_path):
    folder = unimportable_plugin(tmp_path / "plugins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    w = world()
    kube = w.kube
    kube.submit(E2EJob("pt", "pytorch", {"Master": Role(1, (Run(0, 0.3),)), "Worker": Role(1, (Run(0, 0.3),))}))
    kube.submit(E2EJob("tf", "tensorflow", {"Worker": Role(2, (Run(0, 0.3),))}))
    kube.submit(E2EJob("ghost", "ghost", {"Worker": Role(1)}))
    assert kube.wait_phase("pt", "Succeeded")["phase"] == "Succeeded"
    assert kube.wait_phase("tf", "Succeeded")["phase"] == "Succeeded"
    ghost = kube.wait_phase("ghost", "Failed")
    assert conditions(ghost)["Failed"] == ("True", "InvalidSpec")
    assert ghost["message"].startswith("spec.framework: unknown framework 'ghost'"), ghost["message"]
    assert kube.pod_names("ghost") == []
    log = w.operator.log()
    assert "plugin e2e-unimportable could not be loaded: RuntimeError: the e2e plugin cannot be imported" in log


@pytest.mark.skipif(importlib.util.find_spec("mljob_tensorboard") is None, reason="pip install -e plugins/tensorboard")
def test_the_tensorboard_sidecar_joins_the_coordinator_and_the_job_still_completes(backend: Backend):
    """busybox as TensorBoard's image: on a real cluster the sidecar's command is not found, over and over, and
    neither the pod's completion nor the job's restart count may notice."""
    name = "tb-sidecar"
    annotations = {"tensorboard.mljob.io/logdir": "/logs", "tensorboard.mljob.io/image": "busybox:1.36"}
    roles = {"Master": Role(1, (Run(0, 1.0),)), "Worker": Role(2, (Run(0, 1.0),))}
    backend.submit(E2EJob(name, "pytorch", roles, annotations=annotations))
    status = backend.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status.get("restartCount", 0) == 0
    pods = backend.pods(name)
    sidecars = {n: [c["name"] for c in p["spec"].get("initContainers") or []] for n, p in pods.items()}
    assert sidecars == {f"{name}-master-0": ["tensorboard"], f"{name}-worker-0": [], f"{name}-worker-1": []}
    master = pods[f"{name}-master-0"]["spec"]
    (sidecar,) = master["initContainers"]
    assert (sidecar["restartPolicy"], sidecar["image"]) == ("Always", "busybox:1.36")
    assert {"name": "tensorboard-logs", "emptyDir": {}} in master["volumes"]


def test_an_invalid_tensorboard_annotation_fails_its_job_with_the_field_path(backend: Backend):
    if importlib.util.find_spec("mljob_tensorboard") is None:
        pytest.skip("pip install -e plugins/tensorboard")
    name = "tb-bad-port"
    annotations = {"tensorboard.mljob.io/logdir": "/logs", "tensorboard.mljob.io/port": "23456"}
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1)}, annotations=annotations))
    status = backend.wait_phase(name, "Failed")
    assert conditions(status)["Failed"] == ("True", "InvalidSpec")
    assert status["message"] == (
        "metadata.annotations.tensorboard.mljob.io/port: 23456 is the pytorch Worker's port in worker-0's pod; "
        "choose another"
    )
    assert backend.pod_names(name) == []
