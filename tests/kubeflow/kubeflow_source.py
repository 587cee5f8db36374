"""Kubeflow's training-operator source, read from the Go module cache: its CRDs, examples and Go constants.

``make controlplane`` downloads both releases the tests read: v1.8.1 (the bench's peer, and MXJob's last release)
and v1.9.3 (a dependency of Kueue). Without them the tests fail, saying so: they compare against Kubeflow's own
files, and nothing else is a faithful stand-in.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mljob.core.kubeflow.kinds import KINDS, KubeflowKind

FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MODULE = "github.com/kubeflow/training-operator"

SIMPLE_EXAMPLES = {
    "TFJob": "examples/tensorflow/simple.yaml",
    "PyTorchJob": "examples/pytorch/simple.yaml",
    "MXJob": "examples/mxnet/mxjob_dist_v1.yaml",
    "XGBoostJob": "examples/xgboost/xgboostjob.yaml",
    "JAXJob": "examples/jax/cpu-demo/demo.yaml",
    "PaddleJob": "examples/paddlepaddle/simple-cpu.yaml",
}
"""One small example per kind, from the release the kind follows."""


@cache
def gomodcache() -> Path:
    """``go env GOMODCACHE`` (``$GOMODCACHE`` first, then ``go``)."""
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.fail("no `go` command to find the Go module cache with (`go env GOMODCACHE`); install Go")
    done = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"`go env GOMODCACHE` failed: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def module(release: str) -> Path:
    """The extracted module ``github.com/kubeflow/training-operator@<release>``; a clear failure when absent."""
    root = gomodcache() / f"{MODULE}@{release}"
    if not (root / "manifests").is_dir():
        pytest.fail(
            f"Kubeflow's training-operator {release} is not in the Go module cache ({root}); `make controlplane` "
            f"downloads it (or: cd controlplane/go/kueue && go mod download {MODULE}@{release})"
        )
    return root


def kubeflow_crd(kind: KubeflowKind) -> dict[str, Any]:
    """Kubeflow's own CRD of ``kind``, from the release the kind follows (a fresh copy: callers may edit it)."""
    return copy.deepcopy(_kubeflow_crd(kind.release, kind.plural))


@cache
def _kubeflow_crd(release: str, plural: str) -> dict[str, Any]:
    path = module(release) / "manifests" / "base" / "crds" / f"kubeflow.org_{plural}.yaml"
    crd: dict[str, Any] = yaml.load(path.read_text(), Loader=FAST_LOADER)  # about 600 KB each
    return crd


def examples(kind: KubeflowKind) -> list[tuple[str, dict[str, Any]]]:
    """Every example manifest of ``kind`` (``examples/**/*.yaml``), as (path in the module, document)."""
    root = module(kind.release)
    found = []
    for path in sorted((root / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind.kind:
                found.append((str(path.relative_to(root)), doc))
    return found


def simple_example(kind: KubeflowKind) -> dict[str, Any]:
    """The small example of ``kind`` the API server test applies."""
    doc: dict[str, Any] = yaml.safe_load((module(kind.release) / SIMPLE_EXAMPLES[kind.kind]).read_text())
    return doc


def go_source(kind: KubeflowKind, suffix: str) -> str:
    """``pkg/apis/kubeflow.org/v1/<file>_<suffix>.go`` of the kind's release, e.g. ``tensorflow_types.go``."""
    stem = {"TFJob": "tensorflow", "PyTorchJob": "pytorch", "MXJob": "mxnet", "XGBoostJob": "xgboost"}
    stem |= {"JAXJob": "jax", "PaddleJob": "paddlepaddle"}
    return (
        module(kind.release) / "pkg" / "apis" / "kubeflow.org" / "v1" / f"{stem[kind.kind]}_{suffix}.go"
    ).read_text()


ALL_KINDS = list(KINDS)
