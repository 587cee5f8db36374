"""What a person sees through kubectl (the server's version, built with the control plane): the printer
columns, `kubectl wait` on the job's conditions, and a status only the operator can write."""

from __future__ import annotations

import subprocess

from harness import Backend, E2EJob, Forever, Role, Run

from controlplane.cluster import BIN


def kubectl(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={backend.kubeconfig}", "-n", backend.namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_kubectl_wait_for_succeeded_and_get_shows_the_printer_columns(backend: Backend):
    name = "kc-ok"
    backend.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Run(0, 1.0),)), "Worker": Role(1, (Run(0, 1.0),))}))
    waited = kubectl(backend, "wait", "--for=condition=Succeeded", f"mljob/{name}", "--timeout=90s")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"mljob.mljob.io/{name} condition met"
    got = kubectl(backend, "get", "mljobs")
    assert got.returncode == 0, got.stderr
    header, row = got.stdout.splitlines()
    assert header.split() == ["NAME", "FRAMEWORK", "PHASE", "PROGRESS", "ETA", "AGE"]  # empty: it never reported
    assert row.split()[:3] == [name, "pytorch", "Succeeded"]
    phase = kubectl(backend, "get", f"mljob/{name}", "-o", "jsonpath={.status.phase}")
    assert phase.stdout == "Succeeded"


def test_kubectl_wait_for_failed_names_the_failing_replica_in_describe(backend: Backend):
    name = "kc-fail"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Run(3, 0.3),), "Never")}))
    waited = kubectl(backend, "wait", "--for=condition=Failed", f"mljob/{name}", "--timeout=90s")
    assert waited.returncode == 0, waited.stderr
    described = kubectl(backend, "describe", f"mljob/{name}")
    assert "worker-0 exited with code 3 (Error)" in described.stdout, described.stdout
    assert "ReplicaFailed" in described.stdout


def test_status_is_a_subresource_that_a_write_to_the_job_cannot_change(backend: Backend):
    """The CRD serves status as a subresource: a user's patch of the job leaves the operator's status alone."""
    name = "kc-status"
    backend.submit(E2EJob(name, "pytorch", {"Worker": Role(1, (Forever(),))}, run_policy={"suspend": True}))
    backend.wait_phase(name, "Suspended")
    forged = backend.patch("mljobs", name, {"status": {"phase": "Succeeded"}})
    assert forged["status"]["phase"] == "Suspended"
    assert backend.phase(name) == "Suspended"
    patched = kubectl(backend, "patch", f"mljob/{name}", "--type=merge", "-p", '{"status": {"phase": "Failed"}}')
    assert patched.returncode == 0, patched.stderr
    assert backend.phase(name) == "Suspended"
