"""How the operator is deployed: deploy/ applied with real kustomize, RBAC, namespaces watched, and peering.

These start the real ``mljob operator`` command with the arguments deploy/ and the README give, against the
local control plane; deploy/ itself is applied by kubectl (the server's version, built with the control plane),
so a manifest the API server or kustomize refuses fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import E2EJob, Forever, Kube, OperatorProcess, Role, Run

from controlplane.cluster import BIN, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBECTL = BIN / "kubectl"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "base" / name).read_text()) if d]


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done


def created_pods_in_log(operator: OperatorProcess, job: str) -> list[str]:
    """The ``created pod`` lines the operator logged for ``job``: what it says it did to which job."""
    return [line for line in operator.log().splitlines() if f"/{job}: created pod {job}-" in line]


def test_repeatable_namespace_watches_exactly_those_namespaces(world):
    w = world(operator=False)
    base = w.kube.namespace
    teams = {t: f"{base[:55]}-team-{t}" for t in ("a", "b", "c")}
    for ns in teams.values():
        w.kube.create_namespace(ns)
    w.operator.args = ["--namespace", teams["a"], "--namespace", teams["b"]]
    w.operator.start()
    try:
        kubes = {t: w.kube.other(ns) for t, ns in teams.items()}
        for t, kube in kubes.items():
            kube.submit(E2EJob(f"ns-{t}", "pytorch", {"Worker": Role(1, (Run(0, 0.2),))}))
        for t in ("a", "b"):
            kubes[t].wait_phase(f"ns-{t}", "Succeeded")
        # Not watched: the operator never asked the API server anything about that namespace.
        assert [r for r in w.requests() if r.namespace == teams["c"]] == []
        assert kubes["c"].phase("ns-c") == ""
        assert kubes["c"].list("pods") == []
        log = w.operator.log()
        assert f"{teams['a']}/ns-a: created pod ns-a-worker-0" in log
        assert teams["c"] not in log.split("watching MLJobs in", 1)[1].splitlines()[0]
    finally:
        for ns in teams.values():
            w.kube.delete_namespace(ns)


def _install_peering_crds(kube: Kube) -> None:
    import kubernetes

    for crd in _docs("peering.yaml"):
        try:
            kube.ext.create_custom_resource_definition(crd)
        except kubernetes.client.ApiException as error:
            if error.status != 409:  # already there from an earlier test: fine
                raise


def test_with_peering_only_one_replica_acts_and_the_other_takes_over_when_it_leaves(world, e2e):
    w = world(operator=False)
    b = w.kube
    _install_peering_crds(b)
    peering = f"e2e-{b.namespace}"[:63]
    args = ["--namespace", b.namespace, "--peering", peering]
    first = w.operator
    first.args = args
    first.start()

    def peers() -> dict[str, Any]:
        import kubernetes

        try:
            body = b.custom.get_namespaced_custom_object("kopf.dev", "v1", b.namespace, "kopfpeerings", peering)
        except kubernetes.client.ApiException:
            return {}
        return dict(body.get("status") or {})

    # The operator created its peering object itself: deploy/ no longer has to.
    b.wait(lambda: len(peers()) == 1, what="the first replica in the peering")
    second = OperatorProcess(first.kubeconfig, b.namespace, w.tmp / "operator-2.log", args).start()
    try:
        b.wait(lambda: len(peers()) == 2, what="both replicas in the peering")
        # kopf starts a peered operator paused; only the one with the highest priority resumes.
        b.wait(lambda: "Resuming operations" in first.log(), what="the older replica to act")
        assert "Resuming operations" not in second.log()

        b.submit(E2EJob("peer-1", "pytorch", {"Master": Role(1, (Run(0, 0.3),)), "Worker": Role(2, (Run(0, 0.3),))}))
        assert b.wait_phase("peer-1", "Succeeded", "Failed")["phase"] == "Succeeded"
        assert len(created_pods_in_log(first, "peer-1")) == 3
        assert created_pods_in_log(second, "peer-1") == []
        assert "peer-1" not in second.log()
        # Nobody raced anybody for a write; the one 409 allowed is the second replica finding the peering object.
        raced = [r for r in w.requests() if r.code == 409]
        assert [r.key for r in raced] in ([], [("create", "kopfpeerings")]), raced

        first.stop()  # a clean shutdown leaves the peering at once: the other one resumes
        b.wait(lambda: len(peers()) == 1, what="the first replica to leave the peering")
        b.submit(E2EJob("peer-2", "pytorch", {"Worker": Role(2, (Run(0, 0.3),))}))
        assert b.wait_phase("peer-2", "Succeeded", "Failed")["phase"] == "Succeeded"
        assert "Resuming operations" in second.log()
        assert len(created_pods_in_log(second, "peer-2")) == 2
        assert "peer-2" not in first.log()
    finally:
        second.stop()


def test_kubectl_apply_k_deploy_installs_everything_and_the_operator_runs_as_its_service_account(e2e, tmp_path):
    """`kubectl apply -k deploy/` in one pass; then the operator, as deploy/'s ServiceAccount, runs a job.

    RBAC is proven by the API server: every request the operator made was allowed (no 403 in the audit log),
    and a request outside its ClusterRole is refused.
    """
    if e2e.control_plane is None:
        pytest.skip("applies deploy/ cluster-wide: only on the local control plane")
    admin = e2e.kubeconfig
    applied = kubectl(admin, "apply", "-k", str(DEPLOY))
    for kind in ("customresourcedefinition.apiextensions.k8s.io/mljobs.mljob.io", "deployment.apps/mljob-operator",
                 "clusterrole.rbac.authorization.k8s.io/mljob-operator", "serviceaccount/mljob-operator"):  # fmt: skip
        assert kind in applied.stdout, applied.stdout
    # Every object is there as the server stores it, the Deployment included.
    kubectl(admin, "-n", "mljob-system", "get", "deployment/mljob-operator", "serviceaccount/mljob-operator")
    kubectl(admin, "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")

    token = kubectl(admin, "-n", "mljob-system", "create", "token", "mljob-operator", "--duration=1h").stdout.strip()
    user = "system:serviceaccount:mljob-system:mljob-operator"
    sa = e2e.control_plane.token_kubeconfig(token, user, tmp_path / "sa.kubeconfig")

    # No more than its ClusterRole: secrets and nodes are not the operator's business.
    for verb, what in (("get", "secrets"), ("delete", "nodes"), ("create", "deployments")):
        refused = kubectl(sa, "auth", "can-i", verb, what, "-A", check=False)
        assert refused.stdout.strip() == "no", (verb, what, refused.stdout)
    forbidden = kubectl(sa, "-n", "mljob-system", "get", "secrets", check=False)
    assert forbidden.returncode != 0
    assert "Forbidden" in forbidden.stderr, forbidden.stderr

    kube = Kube(admin, "e2e-deploy-sa", kwok=e2e.kwok)
    kube.create_namespace()
    mark = e2e.audit.mark()
    # As deploy/operator.yaml runs it (all namespaces, peering mljob), minus the metrics port, and with
    # Kubernetes' gang scheduling, so the ClusterRole's scheduling.k8s.io rule is exercised too.
    # The webhook as deploy/ runs it, but reached by URL on loopback (no Service routes to a process here).
    config = "mljob-e2e-deploy"
    args = ["--all-namespaces", "--peering", "mljob", "--gang-scheduler", "kubernetes", "--webhook",
            "--webhook-port", str(free_port()), "--webhook-host", "127.0.0.1",
            "--webhook-secret", "mljob-system/mljob-webhook-cert", "--webhook-config", config]  # fmt: skip
    operator = OperatorProcess(sa, "", tmp_path / "operator.log", args).start()
    try:
        huge = tmp_path / "huge.yaml"
        huge.write_text(yaml.safe_dump(E2EJob("huge", "pytorch", {"Worker": Role(10_000)}).body(kube.namespace)))
        kube.wait(
            lambda: (
                "denied the request"
                in kubectl(admin, "create", "--dry-run=server", "-f", str(huge), check=False).stderr
            ),
            what="the webhook, running as the ServiceAccount, to refuse a job over the limits",
        )
        kube.submit(E2EJob("as-sa", "pytorch", {"Master": Role(1, (Run(0, 0.5),)), "Worker": Role(2, (Run(0, 0.5),))}))
        status = kube.wait_phase("as-sa", "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", (status, operator.log()[-3000:])
        kube.messages("as-sa", "Succeeded")
        mine = e2e.audit.requests(mark, user=user)
        assert mine, "the operator's requests are in the audit log under its ServiceAccount"
        # Its own namespace and cluster-scoped objects only: with --all-namespaces it also takes up jobs that
        # earlier tests left in namespaces still being deleted, where the API server refuses every create with
        # a 403 ("being terminated") that says nothing about RBAC.
        refused = [r for r in mine if r.code == 403 and r.namespace in ("", kube.namespace, "mljob-system")]
        assert refused == [], refused
        assert {r.key for r in mine} >= {
            ("create", "pods"),
            ("patch", "mljobs/status"),
            ("watch", "mljobs"),
            ("create", "workloads"),
            ("create", "podgroups"),
            ("create", "secrets"),
            ("patch", "validatingwebhookconfigurations"),
        }
    finally:
        operator.stop()
        kubectl(admin, "delete", f"validatingwebhookconfiguration/{config}", check=False)
        kube.delete_namespace()
        # Not `delete -k`: that would take the session's MLJob CRD, and every job, with it.
        kubectl(admin, "-n", "mljob-system", "delete", "deployment/mljob-operator", "--wait=false", check=False)


def test_deploy_kubeflow_serves_kubeflows_kinds_as_its_service_account(e2e, tmp_path):
    """`kubectl apply --server-side -k deploy/kubeflow/`: deploy/ plus Kubeflow's CRDs, their RBAC and --kubeflow=all;
    the operator, as the ServiceAccount and with the Deployment's own flag, runs a PyTorchJob, no request refused."""
    if e2e.control_plane is None:
        pytest.skip("applies deploy/kubeflow cluster-wide: only on the local control plane")
    admin = e2e.kubeconfig
    applied = kubectl(admin, "apply", "--server-side", "--force-conflicts", "-k", str(DEPLOY / "kubeflow"))
    for kind in ("customresourcedefinition.apiextensions.k8s.io/pytorchjobs.kubeflow.org",
                 "clusterrole.rbac.authorization.k8s.io/mljob-operator-kubeflow"):  # fmt: skip
        assert kind in applied.stdout, applied.stdout
    kubectl(admin, "wait", "--for=condition=Established", "crd/pytorchjobs.kubeflow.org", "--timeout=60s")
    deployment = json.loads(
        kubectl(admin, "-n", "mljob-system", "get", "deployment/mljob-operator", "-o", "json").stdout
    )
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--kubeflow=all" in command
    token = kubectl(admin, "-n", "mljob-system", "create", "token", "mljob-operator", "--duration=1h").stdout.strip()
    user = "system:serviceaccount:mljob-system:mljob-operator"
    sa = e2e.control_plane.token_kubeconfig(token, user, tmp_path / "sa.kubeconfig")
    kube = Kube(admin, "e2e-deploy-kubeflow", kwok=e2e.kwok)
    kube.create_namespace()
    mark = e2e.audit.mark()
    operator = OperatorProcess(sa, "", tmp_path / "operator.log", ["--namespace", kube.namespace, "--kubeflow=all"])
    operator.start()
    try:
        template = {
            "metadata": {"annotations": {"kwok.mljob.io/runs": "0@0.5"}},
            "spec": {"containers": [{"name": "pytorch", "image": "busybox:1.36"}]},
        }
        job = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "as-sa", "namespace": kube.namespace},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}},
        }
        kube.custom.create_namespaced_custom_object("kubeflow.org", "v1", kube.namespace, "pytorchjobs", job)

        def succeeded() -> bool:
            found = kube.custom_get("kubeflow.org/v1", "pytorchjobs", "as-sa") or {}
            conditions = (found.get("status") or {}).get("conditions") or ()
            return any(c["type"] == "Succeeded" and c["status"] == "True" for c in conditions)

        kube.wait(succeeded, what="the PyTorchJob to succeed under the ServiceAccount")
        mine = e2e.audit.requests(mark, user=user)
        refused = [r for r in mine if r.code == 403 and r.namespace in ("", kube.namespace, "mljob-system")]
        assert refused == [], refused
        assert {r.key for r in mine} >= {("watch", "pytorchjobs"), ("patch", "pytorchjobs/status"), ("create", "pods")}
    finally:
        operator.stop()
        kube.delete_namespace()
        kubectl(admin, "-n", "mljob-system", "delete", "deployment/mljob-operator", "--wait=false", check=False)


def test_the_command_refuses_an_unclear_scope_before_touching_any_cluster():
    import sys

    for args in ([], ["--namespace", "a", "--all-namespaces"], ["-A", "--peering", "p", "--standalone"]):
        done = subprocess.run(
            [sys.executable, "-c", "from mljob.cli import main; main()", "operator", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"KUBECONFIG": "/nonexistent", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert "give --namespace NS (repeatable) or --all-namespaces" in done.stderr
        assert "Traceback" not in done.stderr


def test_peering_on_a_cluster_without_the_peering_crd_refuses_to_start_and_says_what_to_apply(tmp_path):
    """A new user's first try: `mljob operator --peering NAME` where deploy/base/peering.yaml was never applied.

    kopf would wait for a peering object it cannot have and never act, with nothing in the log; the operator must
    refuse instead. Its own control plane: the session's has the peering CRDs (other tests install them).
    """
    import sys

    from controlplane import ControlPlane

    with ControlPlane(tmp_path / "bare").start() as cp:
        for args in (["--all-namespaces"], ["--namespace", "default"]):
            done = subprocess.run(
                [sys.executable, "-c", "from mljob.cli import main; main()", "operator", *args, "--peering", "p"],
                capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
            )  # fmt: skip
            assert done.returncode != 0, (args, done.stderr[-2000:])
            plural = "kopfpeerings" if "--namespace" in args else "clusterkopfpeerings"
            assert f"--peering needs kopf's peering CRD ({plural}.kopf.dev)" in done.stderr, done.stderr[-2000:]
            assert "kubectl apply -f deploy/base/peering.yaml" in done.stderr
            assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_after_a_sigkill_of_the_acting_replica_the_other_acts_ten_times_over_with_no_duplicate(world, e2e):
    """deploy/'s two replicas, ten SIGKILLs of whichever acts: each time the other acts (it creates the pods of a
    job submitted right after the kill), a long-running job keeps its status, and the session's invariant checker
    (every pod and job version the API server committed) finds no duplicate pod. Takeover times are printed."""
    import time

    w = world(operator=False)
    b = w.kube
    _install_peering_crds(b)
    peering = f"e2e-{b.namespace}"[:63]
    args = ["--namespace", b.namespace, "--peering", peering]

    def peers() -> set[str]:
        """The identities in the peering object: a replica has joined once its identity is there."""
        import kubernetes

        try:
            body = b.custom.get_namespaced_custom_object("kopf.dev", "v1", b.namespace, "kopfpeerings", peering)
        except kubernetes.client.ApiException:
            return set()
        return set(body.get("status") or {})

    acting = w.operator
    acting.args = args
    acting.start()
    b.wait(lambda: acting.log().count("Resuming operations") == 1, what="the first replica to act")
    first = peers()
    standby = OperatorProcess(acting.kubeconfig, b.namespace, w.tmp / "operator-2.log", args).start()
    replicas = [acting, standby]
    try:
        b.wait(lambda: peers() - first, what="the second replica to join the peering")
        b.submit(E2EJob("steady", "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))}))
        steady = b.wait_phase("steady", "Running")
        took: list[float] = []
        for i in range(10):
            resumed = standby.log().count("Resuming operations")
            acting.kill()
            killed_at = time.monotonic()
            job = f"take-{i}"
            b.submit(E2EJob(job, "pytorch", {"Worker": Role(1, (Run(0, 0.3),))}))
            b.wait(lambda: bool(b.pods(job)), what=f"the standby to act after kill {i + 1}")  # noqa: B023
            took.append(time.monotonic() - killed_at)
            assert standby.log().count("Resuming operations") == resumed + 1
            assert b.wait_phase(job, "Succeeded", "Failed")["phase"] == "Succeeded"
            before = peers()
            acting.start()  # back as the standby: it started last, so its seniority is lowest
            b.wait(lambda: peers() - before, what="the restarted replica to join the peering")  # noqa: B023
            acting, standby = standby, acting
        now = b.status("steady")
        assert now["phase"] == "Running"
        assert now.get("restartCount", 0) == 0
        assert now["startTime"] == steady["startTime"]
        assert sorted(b.pods("steady")) == ["steady-master-0", "steady-worker-0", "steady-worker-1"]
        print("takeover after SIGKILL, s: " + " ".join(f"{t:.1f}" for t in took) + f"; max {max(took):.1f}")
    finally:
        for replica in replicas:
            replica.stop()
