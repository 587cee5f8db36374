"""Build the control plane's binaries from the pinned Go wrapper modules into controlplane/bin/ (git-ignored).

Reused while the versions and the wrapper modules are unchanged: bin/STAMP holds a hash of them. Builds run one
at a time because each link of a Kubernetes command needs about 2.3 GB. Standard library only: `make
controlplane` runs it before any virtual environment exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gomod import GO_ENV, HERE, KUBE_COMMANDS, versions  # type: ignore[import-not-found,unused-ignore]

BIN = HERE / "bin"
BUILD_TAGS = "selinux,notest,grpcnotrace"  # as upstream's release builds
STAMP = BIN / "STAMP"

# (output name, wrapper module folder, main package)
TARGETS: tuple[tuple[str, str, str], ...] = (
    *((cmd, "kubernetes", f"k8s.io/kubernetes/cmd/{cmd}") for cmd in KUBE_COMMANDS),
    ("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
    ("kwok", "kwok", "sigs.k8s.io/kwok/cmd/kwok"),
    ("kueue", "kueue", "sigs.k8s.io/kueue/cmd/kueue"),
    ("scheduler-plugins", "scheduler-plugins", "sigs.k8s.io/scheduler-plugins/cmd/scheduler"),
    ("controller-gen", "volcano", "sigs.k8s.io/controller-tools/cmd/controller-gen"),
    # Cluster DNS for the node agent's pods: the wrapper's own main package, with the plugins it needs.
    ("coredns", "coredns", "mljob.io/controlplane/coredns"),
    # Kubeflow's training-operator v1: the peer bench/headtohead.py runs beside mljob (not used by the tests).
    ("training-operator", "training-operator", "github.com/kubeflow/training-operator/cmd/training-operator.v1"),
    ("kubelet-streaming", "kubelet-streaming", "mljob.io/controlplane/kubelet-streaming"),  # agent's exec, port-forward
)

# The add-ons' CRDs, as their projects ship them: (folder under bin/crds, wrapper, module, folder in the module,
# which files). Volcano's CRDs live in a repository the module proxy does not serve (volcano.sh/volcano); its API
# module volcano.sh/apis holds the types with their kubebuilder markers, so controller-gen makes them, as
# Volcano's own `make manifests` does. kwok's Logs CRD: the control plane installs it at start, and kwok watches
# its objects (--enable-crds=Logs) to learn which file holds a pod's log (controlplane/cluster.py).
CRDS: tuple[tuple[str, str, str, str, str], ...] = (
    ("kueue", "kueue", "sigs.k8s.io/kueue", "config/components/crd/bases", "*.yaml"),
    ("scheduler-plugins", "scheduler-plugins", "sigs.k8s.io/scheduler-plugins", "config/crd/bases", "*.yaml"),
    ("kwok", "kwok", "sigs.k8s.io/kwok", "kustomize/crd/bases", "kwok.x-k8s.io_logs.yaml"),
    # All six of training-operator v1.8.1's kinds: Kubeflow's own end-to-end suite (tests/kubeflow/suite.py) runs
    # every one of them; the head-to-head bench uses the PyTorchJob's.
    (
        "training-operator",
        "training-operator",
        "github.com/kubeflow/training-operator",
        "manifests/base/crds",
        "kubeflow.org_*.yaml",
    ),
)
VOLCANO_TYPES = "volcano.sh/apis/pkg/apis/scheduling/v1beta1"


def key() -> str:
    """What the binaries depend on: the versions, every wrapper's go.mod, go.sum and Go files, the build flags."""
    digest = hashlib.sha256((HERE / "versions.env").read_bytes())
    for folder in sorted((HERE / "go").iterdir()):
        for path in (folder / "go.mod", folder / "go.sum", *sorted(folder.glob("*.go"))):
            digest.update(path.read_bytes())
    for _, wrapper, package in TARGETS:
        digest.update(f"{package} {ldflags(wrapper)} {BUILD_TAGS}".encode())
    return digest.hexdigest()


def ldflags(wrapper: str) -> str:
    """Stamp the Kubernetes version as upstream's build does, so /version says v1.37.2, not v0.0.0-master."""
    flags = ["-s", "-w"]
    if wrapper == "kubernetes":
        version = versions()["KUBERNETES_VERSION"]
        major, minor = version.lstrip("v").split(".")[:2]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
            ]
    return " ".join(flags)


def build(force: bool = False) -> None:
    want = key()
    fresh = STAMP.exists() and STAMP.read_text().strip() == want
    if not force and fresh and all((BIN / name).exists() for name, _, _ in TARGETS):
        missing = [crd for crd in CRDS if not crds_current(crd)]
        if missing:  # a CRD folder added or changed since these binaries were built: copy it, rebuild nothing
            copy_module_crds(missing)
        print(f"control plane binaries up to date in {BIN}")
        return
    BIN.mkdir(exist_ok=True)
    STAMP.unlink(missing_ok=True)
    env = {**os.environ, **GO_ENV, "CGO_ENABLED": "0"}
    for name, wrapper, package in TARGETS:
        started = time.monotonic()
        tmp = BIN / f".{name}.{os.getpid()}.tmp"  # two builds at once (two shells) must not rename each other's
        subprocess.run(
            [
                "go", "build", "-trimpath", "-tags", BUILD_TAGS,
                "-ldflags", ldflags(wrapper), "-o", str(tmp), package,
            ],
            cwd=HERE / "go" / wrapper, env=env, check=True,
        )  # fmt: skip
        tmp.replace(BIN / name)
        size = (BIN / name).stat().st_size / 2**20
        print(f"built {name:<24} {time.monotonic() - started:6.1f} s {size:6.1f} MiB", flush=True)
    copy_node_stages()
    copy_crds()
    STAMP.write_text(want + "\n")


# kwok's own node stages, from the pinned module: Nodes become Ready and keep their leases (heartbeats), so the
# controller-manager never marks them NotReady and evicts their pods.
NODE_STAGES = ("node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml")


def module_dir(wrapper: str, module: str) -> Path:
    env = {**os.environ, **GO_ENV}
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=HERE / "go" / wrapper, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def copy_crds() -> None:
    """bin/crds/<add-on>/: Kueue's, scheduler-plugins' and kwok's CRDs copied, Volcano's generated from its types."""
    root = BIN / "crds"
    shutil.rmtree(root, ignore_errors=True)
    copy_module_crds(CRDS)
    target = root / "volcano"
    target.mkdir(parents=True)
    subprocess.run(
        [str(BIN / "controller-gen"), "crd", f"paths={VOLCANO_TYPES}", f"output:crd:dir={target}"],
        cwd=HERE / "go" / "volcano", env={**os.environ, **GO_ENV}, check=True,
    )  # fmt: skip


CRDS_SOURCE = ".source"
"""In each copied folder: which module, folder and files it was copied from, so a changed CRDS entry is copied again."""


def crds_current(crd: tuple[str, str, str, str, str]) -> bool:
    source = BIN / "crds" / crd[0] / CRDS_SOURCE
    return bool(source.is_file() and source.read_text() == " ".join(crd) + "\n")


def copy_module_crds(crds: Sequence[tuple[str, str, str, str, str]]) -> None:
    """Each folder is filled aside and renamed into place, so a reader never sees it half copied."""
    for crd in crds:
        folder, wrapper, module, within, pattern = crd
        target = BIN / "crds" / folder
        partial = target.with_name(f".{folder}.tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for source in sorted((module_dir(wrapper, module) / within).glob(pattern)):
            shutil.copyfile(source, partial / source.name)
        (partial / CRDS_SOURCE).write_text(" ".join(crd) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)


def copy_node_stages() -> None:
    env = {**os.environ, **GO_ENV}
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
        cwd=HERE / "go" / "kwok", env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    source = Path(out.stdout.strip()) / "kustomize" / "stage"
    target = BIN / "kwok-stages"
    target.mkdir(exist_ok=True)
    for rel in NODE_STAGES:
        shutil.copyfile(source / rel, target / Path(rel).name)


if __name__ == "__main__":
    if shutil.which("go") is None:
        sys.exit("controlplane/build.py: `go` is not on PATH; the control plane is built from Go modules")
    build(force="--force" in sys.argv)
