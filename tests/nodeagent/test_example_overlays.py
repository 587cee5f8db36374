"""controlplane/examples.py: every example's overlay, as kustomize inside kubectl builds it (no root, no cluster)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from controlplane.cluster import BIN
from controlplane.examples import EXAMPLES, ROOT, repository, write_overlays

pytestmark = pytest.mark.skipif(not (BIN / "kubectl").exists(), reason="no kubectl: run `make controlplane`")


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("mxnet/python:1.9.1_cpu", "mxnet/python"),
        ("pytorch/pytorch", "pytorch/pytorch"),
        ("registry:5000/team/img:tag", "registry:5000/team/img"),
        ("img@sha256:abc", "img"),
    ],
)
def test_repository_drops_the_tag_and_digest(image: str, expected: str) -> None:
    assert repository(image) == expected


def test_each_overlay_is_the_example_plus_its_folder_and_environment(tmp_path: Path) -> None:
    overlays = write_overlays(tmp_path)
    assert {"pytorch-ddp", "pytorch-torchrun", "tensorflow-multiworker", "tensorflow-ps", "mxnet-dist-sync"} <= set(
        overlays
    )
    for name, overlay in overlays.items():
        built = subprocess.run(
            [str(BIN / "kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, check=True
        ).stdout
        job = yaml.safe_load(built)
        original = yaml.safe_load((EXAMPLES / name / "job.yaml").read_text())
        assert job["metadata"] == original["metadata"]
        for role, spec in job["spec"]["replicaSpecs"].items():
            for got, was in zip(
                spec["template"]["spec"]["containers"],
                original["spec"]["replicaSpecs"][role]["template"]["spec"]["containers"],
                strict=True,
            ):
                assert got["workingDir"] == str(EXAMPLES / name)
                added = [e for e in got.get("env", []) if e not in was.get("env", [])]
                if name == "mxnet-dist-sync":
                    assert [e["name"] for e in added] == ["PATH"]
                    assert added[0]["value"].startswith(f"{ROOT / '.venv-mxnet' / 'bin'}:")
                else:
                    assert added == []
                rest = {k: v for k, v in got.items() if k not in ("workingDir", "env")}
                assert rest == {k: v for k, v in was.items() if k != "env"}, f"{name} {role}"
