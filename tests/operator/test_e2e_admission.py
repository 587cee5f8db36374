"""The admission webhook on the real API server: ``kubectl apply`` of a bad MLJob fails at once with every field
path, the API server calling the operator's webhook on loopback (a ``url`` clientConfig)."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from harness import E2EJob, Kube, Role

from controlplane.cluster import free_port

BAD = """
apiVersion: mljob.io/v1alpha1
kind: MLJob
metadata: {name: bad}
spec:
  framework: pytorch
  replicaSpecs:
    Master:
      replicas: 2
      template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}
    Chief:
      replicas: 1
      template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}
"""
"""Passes the CRD's schema (the API server's own check); only the framework's rules find what is wrong."""
TOO_BIG = """
apiVersion: mljob.io/v1alpha1
kind: MLJob
metadata: {name: huge}
spec:
  framework: pytorch
  replicaSpecs:
    Master: {replicas: 1, template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}}
    Worker: {replicas: 9, template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}}
"""


def kubectl(e2e: Any, namespace: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = e2e.control_plane.bin / "kubectl"
    return subprocess.run(
        [str(binary), f"--kubeconfig={e2e.kubeconfig}", "-n", namespace, *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def webhook_world(world: Any) -> Any:
    w = world(operator=False)
    ns = w.kube.namespace
    w.operator.extra_args = [
        "--webhook", "--webhook-port", str(free_port()), "--webhook-host", "127.0.0.1",
        "--webhook-secret", f"{ns}/mljob-webhook", "--webhook-config", f"mljob-{ns}"[:63].rstrip("-"),
        "--max-replicas", "8",
    ]  # fmt: skip
    w.operator.start()
    return w


def wait_for_webhook(e2e: Any, b: Kube) -> None:
    """The configuration is applied before kopf listens: until then failurePolicy Ignore lets jobs in."""
    b.wait(
        lambda: (
            "denied the request" in kubectl(e2e, b.namespace, "create", "--dry-run=server", "-f", "-", stdin=BAD).stderr
        ),
        what="the webhook to answer",
    )


def test_kubectl_apply_of_a_bad_job_fails_at_once_with_every_field_path(world, e2e, tmp_path: Path):
    w = webhook_world(world)
    b = w.kube
    wait_for_webhook(e2e, b)
    refused = kubectl(e2e, b.namespace, "apply", "-f", "-", stdin=BAD)
    assert refused.returncode != 0
    said = refused.stderr
    assert 'admission webhook "review.mljob.io" denied the request: the MLJob is invalid' in said, said
    assert "spec.replicaSpecs.Master.replicas: pytorch allows at most 1 Master, got 2" in said, said
    assert "spec.replicaSpecs.Chief: unknown role 'Chief' for framework 'pytorch'" in said, said
    assert b.get("mljobs", "bad") is None  # nothing stored

    limited = kubectl(e2e, b.namespace, "apply", "-f", "-", stdin=TOO_BIG)
    assert limited.returncode != 0
    assert "spec.replicaSpecs.Worker.replicas: 9 replicas; this cluster allows at most 8 per role" in limited.stderr

    # A good job goes through and runs: the operator's own writes (status, ledger) are never refused.
    b.submit(E2EJob("good", "pytorch", {"Master": Role(1), "Worker": Role(2)}))
    b.wait_phase("good", "Succeeded")
    shown = kubectl(
        e2e, b.namespace, "get", "validatingwebhookconfiguration", f"mljob-{b.namespace}"[:63].rstrip("-"), "-o", "yaml"
    )
    config = yaml.safe_load(shown.stdout)
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [b.namespace]
    assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:")

    # What a review costs, as `kubectl create --dry-run=server` sees it (printed for the notes, not asserted).
    good = yaml.safe_dump(E2EJob("timed", "pytorch", {"Master": Role(1)}).body(b.namespace))
    took = []
    for _ in range(10):
        started = time.perf_counter()
        assert kubectl(e2e, b.namespace, "create", "--dry-run=server", "-f", "-", stdin=good).returncode == 0
        took.append(time.perf_counter() - started)
    print(f"kubectl create --dry-run=server through the webhook: median {statistics.median(took) * 1000:.0f} ms")


def test_the_webhook_judges_only_the_namespaces_its_operator_watches(world, e2e):
    w = webhook_world(world)
    b = w.kube
    wait_for_webhook(e2e, b)
    other = f"{b.namespace[:55]}-other"
    b.create_namespace(other)
    try:
        # Nobody reconciles there, and the webhook is not asked: the API server's schema alone decides.
        kept = kubectl(e2e, other, "create", "--dry-run=server", "-f", "-", stdin=TOO_BIG)
        assert kept.returncode == 0, kept.stderr

        # What the webhook adds to a create, from one client: dry-run creates with it and without it.
        def median_ms(namespace: str) -> float:
            body = E2EJob("timed", "pytorch", {"Master": Role(1)}).body(namespace)
            took = []
            for _ in range(20):
                started = time.perf_counter()
                b.custom.create_namespaced_custom_object(
                    "mljob.io", "v1alpha1", namespace, "mljobs", body, dry_run="All"
                )
                took.append(time.perf_counter() - started)
            return statistics.median(took) * 1000

        judged, unjudged = median_ms(b.namespace), median_ms(other)
        print(f"dry-run create: {judged:.1f} ms with the webhook, {unjudged:.1f} ms without (median of 20)")
    finally:
        b.delete_namespace(other)
