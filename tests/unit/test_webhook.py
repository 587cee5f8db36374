"""The admission review and the webhook configuration, pure: the same checks as `mljob validate`, plus limits."""

from __future__ import annotations

import copy

from mljob.core.reconcile import Placement
from mljob.core.validation import Limits
from mljob.operator.webhook import WebhookOptions, configuration, key_pair, review
from mljob.plugins import load_plugins

JOB = {
    "apiVersion": "mljob.io/v1alpha1",
    "kind": "MLJob",
    "metadata": {"name": "j", "namespace": "team"},
    "spec": {
        "framework": "pytorch",
        "replicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "image": "x"}]}}},
            "Worker": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pytorch", "image": "x"}]}}},
        },
    },
}


def test_a_good_job_is_admitted_and_a_bad_one_refused_with_every_field_path():
    plugins = load_plugins()
    assert review(JOB, None, plugins) == []
    bad = copy.deepcopy(JOB)
    bad["spec"]["replicaSpecs"]["Master"]["replicas"] = 2
    bad["spec"]["replicaSpecs"]["Chief"] = bad["spec"]["replicaSpecs"]["Worker"]
    lines = review(bad, None, plugins)
    assert any(line.startswith("spec.replicaSpecs.Master.replicas:") for line in lines), lines
    assert any(line.startswith("spec.replicaSpecs.Chief:") for line in lines), lines


def test_limits_are_refused_with_the_field_and_the_limit():
    lines = review(JOB, None, load_plugins(), Limits(max_replicas=2, max_pods=3))
    assert lines == [
        "spec.replicaSpecs.Worker.replicas: 3 replicas; this cluster allows at most 2 per role",
        "spec.replicaSpecs: 4 pods in all; this cluster allows at most 3 per job",
    ]
    assert review(JOB, None, load_plugins(), Limits(max_name_length=0)) == [
        "metadata.name: 1 characters; this cluster allows at most 0"
    ]


def test_an_update_that_leaves_the_spec_alone_is_admitted_even_for_a_job_that_is_now_invalid():
    plugins = load_plugins()
    bad = copy.deepcopy(JOB)
    bad["spec"]["framework"] = "gone"
    assert review(bad, None, plugins)  # as a create: refused
    labelled = copy.deepcopy(bad)
    labelled["metadata"]["annotations"] = {"mljob.io/ledger": "{}"}
    assert review(labelled, bad, plugins) == []  # the operator's own ledger write


def test_a_gang_scheduler_the_cluster_does_not_serve_is_refused_at_admission():
    job = copy.deepcopy(JOB)
    job["spec"]["runPolicy"] = {"schedulingPolicy": {"gangScheduler": "volcano"}}
    from mljob.api import GangScheduler

    lines = review(job, None, load_plugins(), placement=Placement(unavailable=frozenset({GangScheduler.VOLCANO})))
    assert len(lines) == 1
    assert lines[0].startswith("spec.runPolicy.schedulingPolicy.gangScheduler: volcano needs")


def test_the_configuration_points_at_the_webhook_and_judges_only_watched_namespaces():
    cert, key = key_pair(WebhookOptions(host="127.0.0.1").hosts())
    assert b"BEGIN CERTIFICATE" in cert
    assert b"PRIVATE KEY" in key
    url = configuration(WebhookOptions(port=9443, host="127.0.0.1"), cert, ["b", "a"])
    (hook,) = url["webhooks"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/review"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["a", "b"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    cluster = configuration(WebhookOptions(service="mljob-system/mljob-operator"), cert, [])
    (hook,) = cluster["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "namespace": "mljob-system",
        "name": "mljob-operator",
        "port": 9443,
        "path": "/review",
    }
    assert "namespaceSelector" not in hook  # --all-namespaces
    assert WebhookOptions(service="mljob-system/mljob-operator").hosts()[:2] == [
        "mljob-operator.mljob-system.svc",
        "mljob-operator.mljob-system.svc.cluster.local",
    ]
