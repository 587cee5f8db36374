"""The Go wrapper modules: replace lines derived from k8s.io/kubernetes' own go.mod, never typed by hand."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "controlplane"))  # gomod.py runs as a script before any venv: import it as one

import gomod  # noqa: E402

REAL = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tk8s.io/klog/v2 v2.140.0
)

require k8s.io/kubectl v0.0.0

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
)
"""


def test_staging_modules_are_the_v0_0_0_requirements_only():
    assert gomod.staging_modules(REAL) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/kubectl"]


def test_a_kubernetes_version_maps_to_its_staging_version():
    assert gomod.staging_version("v1.37.2") == "v0.37.2"
    with pytest.raises(ValueError, match=r"unexpected Kubernetes version v2\.0\.0"):
        gomod.staging_version("v2.0.0")


def test_the_wrapper_go_mod_replaces_each_staging_module_at_the_staging_version():
    text = gomod.kubernetes_gomod_text("v1.37.2", REAL)
    assert gomod.replaces(text) == {m: "v0.37.2" for m in ("k8s.io/api", "k8s.io/client-go", "k8s.io/kubectl")}
    assert "go 1.26.0" in text
    assert "godebug default=go1.26" in text


@pytest.mark.skipif(shutil.which("go") is None, reason="needs go, which `make controlplane` needs too")
def test_the_committed_wrapper_matches_the_real_go_mod_of_the_pinned_version():
    """Regenerate from k8s.io/kubernetes' go.mod (module cache or proxy) and compare with what is committed."""
    version = gomod.versions()["KUBERNETES_VERSION"]
    real = gomod.real_kubernetes_gomod(version)
    committed = (ROOT / "controlplane" / "go" / "kubernetes" / "go.mod").read_text()
    assert gomod.replaces(committed) == gomod.replaces(gomod.kubernetes_gomod_text(version, real))
    assert len(gomod.replaces(committed)) == len(gomod.staging_modules(real)) >= 30
    assert f"k8s.io/kubernetes {version}" in committed
    versions = gomod.versions()
    assert f"go.etcd.io/etcd/server/v3 {versions['ETCD_VERSION']}" in (ROOT / "controlplane/go/etcd/go.mod").read_text()
    assert f"sigs.k8s.io/kwok {versions['KWOK_VERSION']}" in (ROOT / "controlplane/go/kwok/go.mod").read_text()
    assert f"sigs.k8s.io/kueue {versions['KUEUE_VERSION']}" in (ROOT / "controlplane/go/kueue/go.mod").read_text()
    volcano = (ROOT / "controlplane/go/volcano/go.mod").read_text()
    assert f"volcano.sh/apis {versions['VOLCANO_APIS_VERSION']}" in volcano
    assert f"sigs.k8s.io/controller-tools {versions['CONTROLLER_TOOLS_VERSION']}" in volcano
    training = (ROOT / "controlplane/go/training-operator/go.mod").read_text()
    assert f"github.com/kubeflow/training-operator {versions['TRAINING_OPERATOR_VERSION']}" in training
    coredns = (ROOT / "controlplane/go/coredns/go.mod").read_text()
    assert f"github.com/coredns/coredns {versions['COREDNS_VERSION']}" in coredns


def test_the_scheduler_plugins_wrapper_copies_its_replace_lines():
    """scheduler-plugins pins Kubernetes 1.28 by replace lines: the wrapper has exactly them, and the module."""
    import json

    version = gomod.versions()["SCHEDULER_PLUGINS_VERSION"]
    info = json.loads(gomod.go("mod", "download", "-json", f"sigs.k8s.io/scheduler-plugins@{version}", cwd=ROOT))
    real = Path(info["GoMod"]).read_text()
    committed = (ROOT / "controlplane/go/scheduler-plugins/go.mod").read_text()
    assert gomod.replaces(committed) == gomod.replaces(real)
    assert len(gomod.replaces(real)) >= 25
    assert f"sigs.k8s.io/scheduler-plugins {version}" in committed
