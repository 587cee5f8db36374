"""`mljob render` shows every object the operator creates, the gang scheduler's included."""

from __future__ import annotations

import yaml

from mljob.cli.app import app

JOB = """
apiVersion: mljob.io/v1alpha1
kind: MLJob
metadata: {name: gang}
spec:
  framework: pytorch
  replicaSpecs:
    Master: {replicas: 1, template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}}
    Worker: {replicas: 2, template: {spec: {containers: [{name: pytorch, image: busybox:1.36}]}}}
  runPolicy: {schedulingPolicy: {minAvailable: 2}}
"""


def test_render_with_the_operator_default_gang_scheduler_prints_the_workload_and_pod_group_first(runner, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    result = runner.invoke(app, ["render", str(path), "--gang-scheduler", "kubernetes"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs] == ["Workload", "PodGroup", "Pod", "Pod", "Pod", "Service"]
    assert docs[1]["spec"]["schedulingPolicy"] == {"gang": {"minCount": 2}}
    plain = runner.invoke(app, ["render", str(path)])
    assert [d["kind"] for d in yaml.safe_load_all(plain.output)] == ["Pod", "Pod", "Pod", "Service"]


def test_an_unknown_gang_scheduler_is_refused_with_the_choices(runner, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("minAvailable: 2", "minAvailable: 2, gangScheduler: slurm"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "spec.runPolicy.schedulingPolicy.gangScheduler" in result.output
    assert "kubernetes" in result.output
    assert "none" in result.output


def test_render_shows_each_backend_s_objects_and_a_queued_job_s_kueue_workload_first(runner, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        JOB.replace("metadata: {name: gang}", "metadata: {name: gang, labels: {kueue.x-k8s.io/queue-name: q}}")
    )
    for backend, api in (
        ("coscheduling", "scheduling.x-k8s.io/v1alpha1"),
        ("volcano", "scheduling.volcano.sh/v1beta1"),
    ):
        result = runner.invoke(app, ["render", str(path), "--gang-scheduler", backend])
        assert result.exit_code == 0, result.output
        docs = list(yaml.safe_load_all(result.output))
        assert [(d["apiVersion"], d["kind"]) for d in docs[:2]] == [
            ("kueue.x-k8s.io/v1beta2", "Workload"),
            (api, "PodGroup"),
        ]
        assert docs[0]["spec"]["queueName"] == "q"
        assert docs[1]["spec"]["minMember"] == 2
        assert [d["kind"] for d in docs[2:]] == ["Pod", "Pod", "Pod", "Service"]
