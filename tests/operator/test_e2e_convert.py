"""A converted Kubeflow job runs: `mljob convert` of Kubeflow's PyTorch MNIST example, applied to the real
control plane, becomes a running job with exactly the pods the Kubeflow file described."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from harness import Kube

EXAMPLE = Path(__file__).resolve().parents[1] / "convert" / "kubeflow" / "pytorch-mnist-gloo.yaml"


def test_a_converted_kubeflow_pytorchjob_runs_with_its_master_and_worker(backend: Kube):
    done = subprocess.run(
        [sys.executable, "-c", "from mljob.cli import main; main()", "convert", str(EXAMPLE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (job,) = list(yaml.safe_load_all(done.stdout))
    job["metadata"]["namespace"] = backend.namespace
    backend.create("mljobs", job)
    name = job["metadata"]["name"]
    backend.wait_phase(name, "Running")  # kwok's nodes run no image: the pods run until the job is deleted
    pods = backend.pods(name)
    assert sorted(pods) == [f"{name}-master-0", f"{name}-worker-0"]
    for pod in pods.values():
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "kubeflow/pytorch-dist-mnist:latest"
        assert container["args"] == ["--backend", "gloo"]
        assert pod["spec"]["restartPolicy"] == "OnFailure"
