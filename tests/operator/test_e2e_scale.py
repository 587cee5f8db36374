"""The scale subresource and the replicaSpecs rule on the real API server (issue 25): ``kubectl scale`` changes an
elastic MLJob's Worker count, and only an elastic one's, while it runs; the scale subresource reports the
membership and the selector a HorizontalPodAutoscaler reads. No operator acts in the namespace: what is checked
is the CRD, which the API server enforces."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from harness import E2EJob, Forever, Kube, Role

from controlplane.cluster import BIN


def kubectl(b: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={b.kubeconfig}", "-n", b.namespace, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def body(b: Kube, name: str, elastic: bool) -> dict[str, Any]:
    made = E2EJob(name, "pytorch", {"Worker": Role(3, (Forever(),))}).body(b.namespace)
    if elastic:
        made["spec"]["frameworkOptions"] = {"elasticPolicy": {"minReplicas": 2, "maxReplicas": 4}}
    return made


def test_kubectl_scale_changes_an_elastic_jobs_workers_and_refuses_a_plain_running_one(world):
    b = world(operator=False).kube
    b.create("mljobs", body(b, "stretchy", elastic=True))
    b.create("mljobs", body(b, "plain", elastic=False))

    scaled = kubectl(b, "scale", "mljob/stretchy", "--replicas=4")
    assert scaled.returncode == 0, scaled.stderr
    assert b.job("stretchy")["spec"]["replicaSpecs"]["Worker"]["replicas"] == 4

    refused = kubectl(b, "scale", "mljob/plain", "--replicas=4")
    assert refused.returncode != 0
    assert "replicaSpecs is immutable unless the job is suspended" in refused.stderr, refused.stderr
    assert b.job("plain")["spec"]["replicaSpecs"]["Worker"]["replicas"] == 3

    # Anything else of an elastic job's replicaSpecs stays immutable.
    patch = {"spec": {"replicaSpecs": {"Worker": {"restartPolicy": "Never"}}}}
    changed = kubectl(b, "patch", "mljob/stretchy", "--type=merge", "-p", json.dumps(patch))
    assert changed.returncode != 0
    assert "replicaSpecs is immutable" in changed.stderr, changed.stderr


def test_the_scale_subresource_reports_the_membership_and_the_selector(world):
    b = world(operator=False).kube
    b.create("mljobs", body(b, "hpa", elastic=True))
    status = {"status": {"elastic": {"running": 3, "minReplicas": 2, "maxReplicas": 4},
                         "selector": "mljob.io/job-name=hpa,mljob.io/replica-type=worker"}}  # fmt: skip
    b.custom.patch_namespaced_custom_object_status("mljob.io", "v1alpha1", b.namespace, "mljobs", "hpa", status)
    got = kubectl(b, "get", "--raw", f"/apis/mljob.io/v1alpha1/namespaces/{b.namespace}/mljobs/hpa/scale")
    assert got.returncode == 0, got.stderr
    scale = json.loads(got.stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "mljob.io/job-name=hpa,mljob.io/replica-type=worker"


def test_an_elastic_pytorchjob_scales_through_its_own_scale_subresource(world, kubeflow_crds):
    """A PyTorchJob with an elasticPolicy, served with --kubeflow PyTorchJob (kwok pods): ``kubectl scale
    pytorchjob`` (Kubeflow's CRD scales pytorchReplicaSpecs.Worker) adds a Worker pod and touches no other, and
    the scale subresource reads the selector mljob writes in replicaStatuses.Worker."""
    w = world(operator=False)
    b = w.kube
    w.operator.extra_args = ["--kubeflow", "PyTorchJob"]
    w.operator.start()
    template = {
        "metadata": {"annotations": {"kwok.mljob.io/runs": "forever"}},
        "spec": {"containers": [{"name": "pytorch", "image": "pytorch/pytorch:2.5.1-cpu", "command": ["torchrun"]}]},
    }
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "stretch"},
        "spec": {
            "elasticPolicy": {"minReplicas": 2, "maxReplicas": 4, "maxRestarts": 5},
            "pytorchReplicaSpecs": {"Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": template}},
        },
    }
    b.custom.create_namespaced_custom_object("kubeflow.org", "v1", b.namespace, "pytorchjobs", body)

    def workers() -> dict[str, str]:
        return {
            p["metadata"]["name"]: p["metadata"]["uid"]
            for p in b.list("pods", "training.kubeflow.org/job-name=stretch")
        }

    before = b.wait(lambda: len(workers()) == 2 and workers(), what="the two Worker pods")
    scaled = kubectl(b, "scale", "pytorchjob/stretch", "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    after = b.wait(lambda: len(workers()) == 3 and workers(), what="a third Worker pod")
    assert {name: after[name] for name in before} == before  # the others are not recreated
    assert "stretch-worker-2" in after
    env = {e["name"]: e.get("value") for e in b.get("pods", "stretch-worker-2")["spec"]["containers"][0]["env"]}
    assert env["PET_NNODES"] == "2:4"
    got = b.wait(
        lambda: (
            r := kubectl(b, "get", "--raw", f"/apis/kubeflow.org/v1/namespaces/{b.namespace}/pytorchjobs/stretch/scale")
        ).returncode == 0 and json.loads(r.stdout)["status"].get("selector") and json.loads(r.stdout),
        what="the PyTorchJob's scale subresource with a selector",
    )  # fmt: skip
    assert got["spec"]["replicas"] == 3
    assert "training.kubeflow.org/job-name=stretch" in got["status"]["selector"]


def test_a_horizontal_pod_autoscaler_scales_an_elastic_job_through_the_scale_subresource(world):
    """The controller-manager's HPA controller, real: an autoscaler whose minReplicas is above the job's Worker
    count raises it (it reads the count and writes it through the scale subresource; no metrics are needed for
    that rule)."""
    b = world(operator=False).kube
    b.create("mljobs", body(b, "auto", elastic=True))
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "auto"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "mljob.io/v1alpha1", "kind": "MLJob", "name": "auto"},
            "minReplicas": 4,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                                    "averageUtilization": 80}}}],
        },
    }  # fmt: skip
    from kubernetes import client

    client.AutoscalingV2Api(b.api).create_namespaced_horizontal_pod_autoscaler(b.namespace, hpa)
    b.wait(lambda: b.job("auto")["spec"]["replicaSpecs"]["Worker"]["replicas"] == 4, timeout=120,
           what="the autoscaler to scale the Workers to its minimum")  # fmt: skip
