"""mljob's CRDs of Kubeflow's six kinds on a real API server (the session's control plane): they install and become
Established, one of Kubeflow's own examples of each kind is stored whole by server-side apply (nothing pruned),
``kubectl get`` shows Kubeflow's columns, and the status, scale and CEL rules work as in Kubeflow's CRDs.

The CRDs stay installed after the test (like the session's MLJob CRD): deleting a CRD is asynchronous, and a later
test that installs it again would meet it half-deleted. No operator watches this test's namespace.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.cluster import BIN
from mljob.core.kubeflow.admission import review
from mljob.core.kubeflow.api import parse, unknown_fields
from mljob.core.kubeflow.kinds import KINDS
from tests.kubeflow.kubeflow_source import simple_example

CRDS = Path(__file__).resolve().parents[2] / "crds" / "kubeflow"
NAMESPACE = "e2e-p-kubeflow-crds"


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done


def table(kubeconfig: Path, plural: str) -> list[list[str]]:
    """``kubectl get <plural>``, as rows of columns (an empty column kept as '')."""
    out = kubectl(kubeconfig, "-n", NAMESPACE, "get", plural).stdout.splitlines()
    header = out[0]
    starts = [header.index(name) for name in header.split()]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line) + 1], strict=True)] for line in out]


def test_the_six_crds_serve_kubeflows_examples_with_kubeflows_columns(e2e, tmp_path):
    admin = e2e.kubeconfig
    if e2e.control_plane is None:
        pytest.skip("installs CRDs cluster-wide: only on the local control plane")
    kubectl(admin, "apply", "--server-side", "--force-conflicts", "--field-manager=mljob-e2e", "-k", str(CRDS))
    names = [f"crd/{kind.crd_name}" for kind in KINDS.values()]
    kubectl(admin, "wait", "--for=condition=Established", "--timeout=60s", *names)
    kubectl(admin, "create", "namespace", NAMESPACE)
    try:
        for kind in KINDS.values():
            doc = simple_example(kind)
            doc["metadata"]["namespace"] = NAMESPACE
            name = doc["metadata"]["name"]
            path = tmp_path / f"{kind.plural}.yaml"
            path.write_text(yaml.safe_dump(doc))
            applied = kubectl(admin, "apply", "--server-side", "--field-manager=mljob-e2e", "-f", str(path))
            assert f"{kind.singular}.kubeflow.org/{name} serverside-applied" in applied.stdout

            stored: dict[str, Any] = json.loads(
                kubectl(admin, "-n", NAMESPACE, "get", f"{kind.plural}/{name}", "-o", "json").stdout
            )
            assert stored["spec"] == doc["spec"], f"{kind.kind}: the API server pruned or defaulted something"
            job = parse(stored)
            assert list(unknown_fields(job)) == []
            assert review(kind.kind, stored) == []

            # The State column is the last condition's type, once the status subresource has one.
            (header, row) = table(admin, kind.plural)
            assert header == ["NAME", "STATE", "AGE"]
            assert row[:2] == [name, ""]
            status = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}
            kubectl(
                admin, "-n", NAMESPACE, "patch", f"{kind.plural}/{name}", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}),
            )  # fmt: skip
            (header, row) = table(admin, kind.plural)
            assert header == ["NAME", "STATE", "AGE"]
            assert row[:2] == [name, "Running"]

            if kind.scale:
                kubectl(admin, "-n", NAMESPACE, "scale", f"{kind.plural}/{name}", "--replicas=3")
                replicas = kubectl(
                    admin, "-n", NAMESPACE, "get", f"{kind.plural}/{name}",
                    "-o", f"jsonpath={{.spec.{kind.replica_specs_field}.Worker.replicas}}",
                ).stdout  # fmt: skip
                assert replicas == "3", kind.kind

        # The CEL rule on the queue, and the one default (runPolicy.suspend), as in Kubeflow's CRDs.
        tf = simple_example(KINDS["TFJob"])
        tf["metadata"] |= {"namespace": NAMESPACE, "name": "queued"}
        tf["spec"]["runPolicy"] = {"schedulingPolicy": {"queue": "a"}}
        path = tmp_path / "queued.yaml"
        path.write_text(yaml.safe_dump(tf))
        kubectl(admin, "apply", "--server-side", "--field-manager=mljob-e2e", "-f", str(path))
        suspend = kubectl(admin, "-n", NAMESPACE, "get", "tfjob/queued", "-o", "jsonpath={.spec.runPolicy.suspend}")
        assert suspend.stdout == "false"
        moved = kubectl(
            admin, "-n", NAMESPACE, "patch", "tfjob/queued", "--type=merge",
            "-p", '{"spec": {"runPolicy": {"schedulingPolicy": {"queue": "b"}}}}', check=False,
        )  # fmt: skip
        assert moved.returncode != 0
        assert "spec.runPolicy.schedulingPolicy.queue is immutable" in moved.stderr
    finally:
        kubectl(admin, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
