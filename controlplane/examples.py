"""The examples as the local cluster's node agent runs them: each job.yaml verbatim, in a kustomize overlay.

The node agent runs no image (docs/node-agent.md), so two things an image would give a pod come from this
machine instead, and the overlay says which with two JSON patches per container, nothing else:

* **workingDir**: the examples set none (an image's WORKDIR would hold train.py); the overlay sets the example's
  folder, as ``mljob run`` runs replicas in the job file's folder. Two examples share one image with different
  scripts (pytorch-ddp and pytorch-torchrun), so no per-image mapping could stand in for it.
* **PATH**: an image is a Python environment; the agent's own (``.venv``) stands in by default, and an image named
  in :data:`ENVIRONMENTS` gets its own environment first on PATH (MXNet 1.9.1 needs numpy<1.24: ``.venv-mxnet``).

``kubectl apply -k <overlay>`` then applies the example as a user would, plus those lines (``kubectl kustomize
<overlay>`` shows them). job.yaml is copied, not referenced: kustomize refuses files outside an overlay's folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENVIRONMENTS = {"mxnet/python": ".venv-mxnet"}
"""Image repository -> the Python environment (relative to the repository) that stands in for it."""
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def repository(image: str) -> str:
    """``mxnet/python:1.9.1_cpu`` -> ``mxnet/python`` (a digest or tag dropped, a registry port kept)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def patches(job: dict[str, Any], folder: Path, root: Path = ROOT) -> list[dict[str, Any]]:
    """The JSON patches (RFC 6902) that give each container its example folder and its image's environment."""
    out: list[dict[str, Any]] = []
    for role, spec in (job.get("spec") or {}).get("replicaSpecs", {}).items():
        for index, container in enumerate(spec["template"]["spec"].get("containers") or ()):
            at = f"/spec/replicaSpecs/{role}/template/spec/containers/{index}"
            if "workingDir" not in container:
                out.append({"op": "add", "path": f"{at}/workingDir", "value": str(folder)})
            venv = ENVIRONMENTS.get(repository(str(container.get("image", ""))))
            if venv:
                path = {"name": "PATH", "value": f"{root / venv / 'bin'}:{SYSTEM_PATH}"}
                if container.get("env"):
                    out.append({"op": "add", "path": f"{at}/env/-", "value": path})
                else:
                    out.append({"op": "add", "path": f"{at}/env", "value": [path]})
    return out


def write_overlay(folder: Path, dest: Path, root: Path = ROOT) -> Path:
    """``dest`` as a kustomization of ``folder``/job.yaml (one MLJob) and patch.yaml (:func:`patches`)."""
    text = (folder / "job.yaml").read_text()
    job = yaml.safe_load(text)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "job.yaml", dest / "job.yaml")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["job.yaml"],
        "patches": [
            {"path": "patch.yaml", "target": {"group": "mljob.io", "kind": "MLJob", "name": job["metadata"]["name"]}}
        ],
    }
    (dest / "patch.yaml").write_text(yaml.safe_dump(patches(job, folder.resolve(), root), sort_keys=False))
    header = f"# Generated from {folder}/job.yaml for the node agent (controlplane/examples.py); not an image.\n"
    (dest / "kustomization.yaml").write_text(header + yaml.safe_dump(kustomization, sort_keys=False))
    return dest


def write_overlays(dest: Path, examples: Path = EXAMPLES, root: Path = ROOT) -> dict[str, Path]:
    """An overlay per example folder under ``dest`` (``dest/<example>``), by example name."""
    return {
        folder.name: write_overlay(folder, dest / folder.name, root)
        for folder in sorted(examples.iterdir())
        if (folder / "job.yaml").is_file()
    }
