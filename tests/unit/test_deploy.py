"""Everything in deploy/ is valid against the Kubernetes OpenAPI schema (strict), and the
kustomization names only files that exist."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).parents[2] / "deploy" / "base"
K8S_VERSION = "1.37"
BUILT_IN = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1"}


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [
            (f"{path.name}:{d['kind']}/{d['metadata']['name']}", d) for d in yaml.safe_load_all(path.read_text()) if d
        ]
    return docs


# Custom resources (the kopf peering object) are checked against their CRD by the API server.
BUILT_IN_MANIFESTS = [(w, d) for w, d in manifests() if d["apiVersion"] in BUILT_IN]


@pytest.mark.parametrize(("where", "doc"), BUILT_IN_MANIFESTS, ids=[w for w, _ in BUILT_IN_MANIFESTS])
def test_manifest_is_valid(where, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_resources_exist():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    missing = [r for r in kustomization["resources"] if not (DEPLOY / r).exists()]
    assert missing == []


def test_operator_runs_the_cli_with_peering():
    deployment = next(d for _, d in manifests() if d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["mljob", "operator"]
    assert "--peering" in command


def test_the_operator_image_installs_every_plugin_and_copies_only_what_exists():
    """`docker build` cannot run here, so the Dockerfile's inputs are checked instead."""
    root = DEPLOY.parents[1]
    lines = (root / "Dockerfile").read_text().splitlines()
    copied = [part for line in lines if line.startswith("COPY ") for part in line.split()[1:-1]]
    assert [c for c in copied if not (root / c).exists()] == []
    plugins = sorted(p.parent.name for p in (root / "plugins").glob("*/pyproject.toml") if p.parent.name != "_template")
    assert sorted(c.removeprefix("plugins/") for c in copied if c.startswith("plugins/")) == plugins
    deployment = next(d for _, d in manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["mljob", "operator"]
