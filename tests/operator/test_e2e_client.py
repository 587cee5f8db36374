"""The CLI's cluster verbs and the Python client against the real control plane (the session's shared operator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import E2EJob, Forever, Kube, Role, Run

from controlplane.cluster import append_log
from mljob.api import MLJob


def mljob(e2e: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(e2e.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-c", "from mljob.cli import main; main()", *args],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip


def job_file(tmp_path: Path, job: E2EJob) -> Path:
    body = job.body("unused")
    del body["metadata"]["namespace"]  # the CLI's -n decides
    path = tmp_path / f"{job.name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_submit_wait_get_describe_delete_with_exit_codes_a_script_can_use(backend: Kube, e2e, tmp_path):
    ns = backend.namespace
    quick = E2EJob("quick", "pytorch", {"Master": Role(1, (Run(0, 0.5),)), "Worker": Role(2, (Run(0, 0.5),))})
    done = mljob(e2e, "submit", str(job_file(tmp_path, quick)), "-n", ns, "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert f"mljob.mljob.io/quick created in {ns}" in done.stdout
    assert "quick Succeeded" in done.stdout
    assert "quick: Succeeded" in done.stderr  # progress, one line per change

    table = mljob(e2e, "get", "-n", ns)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "FRAMEWORK", "PHASE", "READY", "RESTARTS", "PROGRESS", "ETA", "AGE"]
    assert row.split()[:5] == ["quick", "pytorch", "Succeeded", "0/3", "0"]
    assert row[header.index("PROGRESS") : header.index("AGE")].strip() == ""  # it never reported: empty cells
    every = mljob(e2e, "get", "-A")
    assert any(line.split()[:2] == [ns, "quick"] for line in every.stdout.splitlines()), every.stdout
    as_json = json.loads(mljob(e2e, "get", "quick", "-n", ns, "-o", "json").stdout)
    assert MLJob.model_validate(as_json).status.phase.value == "Succeeded"  # type: ignore[union-attr]

    described = mljob(e2e, "describe", "quick", "-n", ns)
    assert described.returncode == 0, described.stderr
    for needle in ("Phase:       Succeeded", "Succeeded   True", "master-0", "worker-1", "Events:", "Running"):
        assert needle in described.stdout, (needle, described.stdout)

    deleted = mljob(e2e, "delete", "quick", "-n", ns)
    assert deleted.returncode == 0, deleted.stderr
    backend.wait(lambda: backend.get("mljobs", "quick") is None, what="quick deleted")
    missing = mljob(e2e, "get", "quick", "-n", ns)
    assert missing.returncode == 3
    assert f"mljob quick not found in namespace {ns}" in missing.stderr


def test_wait_exits_1_when_the_job_fails_and_4_when_time_is_up(backend: Kube, e2e, tmp_path):
    ns = backend.namespace
    backend.submit(E2EJob("broken", "pytorch", {"Master": Role(1, (Run(3, 0.3),), "Never")}))
    failed = mljob(e2e, "wait", "broken", "-n", ns, "--for", "Succeeded", "--timeout", "120")
    assert failed.returncode == 1
    assert "broken Failed: " in failed.stderr, failed.stderr
    backend.submit(E2EJob("endless", "pytorch", {"Master": Role(1, (Forever(),))}))
    running = mljob(e2e, "wait", "endless", "-n", ns, "--for", "running", "--timeout", "120")
    assert running.returncode == 0, running.stderr
    late = mljob(e2e, "wait", "endless", "-n", ns, "--for", "Succeeded", "--timeout", "2")
    assert late.returncode == 4
    assert "endless is Running after 2 s, not Succeeded" in late.stderr
    usage = mljob(e2e, "wait", "endless", "-n", ns, "--for", "Done")
    assert usage.returncode == 1
    assert "--for: 'Done' is not a phase or condition" in usage.stderr


def test_a_bad_file_is_refused_before_anything_is_sent(backend: Kube, e2e, tmp_path):
    bad = job_file(tmp_path, E2EJob("bad", "pytorch", {"Master": Role(2)}))
    refused = mljob(e2e, "submit", str(bad), "-n", backend.namespace)
    assert refused.returncode == 1
    assert "spec.replicaSpecs.Master.replicas: pytorch allows at most 1 Master, got 2" in refused.stderr
    assert backend.get("mljobs", "bad") is None


REPLICAS = ("master-0", "worker-0", "worker-1")


def give_logs(e2e: Any, backend: Kube, job: str) -> dict[str, Path]:
    """Every replica of ``job`` its own log, served by kwok as a kubelet would (ControlPlane.give_log)."""
    cp = e2e.control_plane
    assert cp is not None
    return {r: cp.give_log(backend.namespace, f"{job}-{r}", f"{r} starts", f"{r} step 1 loss 0.5") for r in REPLICAS}


def lines_of(proc: subprocess.Popen[str]) -> list[str]:
    """What ``proc`` prints, line by line as it comes (a reader thread fills the list)."""
    assert proc.stdout is not None
    out, seen = proc.stdout, []

    def read() -> None:
        for line in out:
            seen.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return seen


@pytest.mark.kwok
def test_logs_print_every_replica_s_lines_prefixed_or_one_replica_s(backend: Kube, e2e):
    from mljob import Client

    ns = backend.namespace
    backend.submit(E2EJob("talky", "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))}))
    backend.wait_phase("talky", "Running")
    give_logs(e2e, backend, "talky")

    every = mljob(e2e, "logs", "talky", "-n", ns)
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == [
        f"[{r}] {r} {text}" for r in REPLICAS for text in ("starts", "step 1 loss 0.5")
    ]
    one = mljob(e2e, "logs", "talky", "-n", ns, "--replica", "worker-1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == ["[worker-1] worker-1 starts", "[worker-1] worker-1 step 1 loss 0.5"]

    client = Client(ns, kubeconfig=str(e2e.kubeconfig))
    assert list(client.logs("talky", replica="master-0")) == [
        ("master-0", "master-0 starts"),
        ("master-0", "master-0 step 1 loss 0.5"),
    ]
    assert list(client.logs("talky")) == [
        (r, f"{r} {text}") for r in REPLICAS for text in ("starts", "step 1 loss 0.5")
    ]


@pytest.mark.kwok
def test_logs_follow_streams_a_line_written_after_it_started(backend: Kube, e2e):
    ns = backend.namespace
    backend.submit(E2EJob("tail", "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))}))
    backend.wait_phase("tail", "Running")
    files = give_logs(e2e, backend, "tail")
    env = {**os.environ, "KUBECONFIG": str(e2e.kubeconfig), "PYTHONUNBUFFERED": "1"}
    follow = subprocess.Popen(
        [sys.executable, "-c", "from mljob.cli import main; main()", "logs", "tail", "-n", ns, "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        seen = lines_of(follow)
        so_far = {f"[{r}] {r} {text}" for r in REPLICAS for text in ("starts", "step 1 loss 0.5")}
        backend.wait(lambda: so_far <= set(seen), 120, "mljob logs -f to print every replica's log so far")
        append_log(files["worker-1"], "worker-1 step 2 loss 0.25")
        backend.wait(lambda: "[worker-1] worker-1 step 2 loss 0.25" in seen, 120, "the appended line streamed")
        assert follow.poll() is None  # still following
        mine = [line for line in seen if line.startswith("[worker-1]")]
        assert mine == ["[worker-1] worker-1 starts", "[worker-1] worker-1 step 1 loss 0.5", mine[-1]]
    finally:
        follow.kill()
        follow.wait()


@pytest.mark.kwok
def test_logs_say_clearly_when_a_pod_has_none(backend: Kube, e2e):
    """kwok runs no containers: a pod has a log only when a test gives it one (no kwok Logs object names this one),
    so kwok answers the API server's pod log request with an error, and `mljob logs` says so in one line."""
    backend.submit(E2EJob("quiet", "pytorch", {"Master": Role(1, (Forever(),))}))
    backend.wait_phase("quiet", "Running")
    said = mljob(e2e, "logs", "quiet", "-n", backend.namespace)
    assert said.returncode == 1
    assert said.stderr.startswith("no log for quiet-master-0: "), said.stderr
    assert 'no logs found for container "pytorch"' in said.stderr  # kwok's answer, relayed by the API server
    assert len(said.stderr.strip().splitlines()) == 1
    wrong = mljob(e2e, "logs", "quiet", "-n", backend.namespace, "--replica", "worker-3")
    assert wrong.returncode == 3
    assert "quiet has no replica worker-3; replicas: master-0" in wrong.stderr


def test_the_python_client_submits_waits_and_reads_the_job_as_models(backend: Kube, e2e, tmp_path):
    from mljob import Client
    from mljob.client import InvalidJob, JobEnded

    client = Client(backend.namespace, kubeconfig=str(e2e.kubeconfig))
    job = client.submit(E2EJob("nb", "tensorflow", {"Worker": Role(2, (Run(0, 0.5),))}).body(backend.namespace))
    assert isinstance(job, MLJob)
    phases: list[str] = []
    done = client.wait(
        "nb", "Succeeded", timeout=120, on_change=lambda j: phases.append(j.status.phase.value if j.status else "-")
    )
    assert done.status is not None
    assert done.status.phase.value == "Succeeded"
    assert phases[-1] == "Succeeded"
    assert [j.name for j in client.jobs()] == ["nb"]
    assert [p["metadata"]["name"] for p in client.pods("nb")] == ["nb-worker-0", "nb-worker-1"]
    # The terminal event follows the status write and the cleanup's deletes it names: a moment after the status.
    backend.wait(lambda: any(e["reason"] == "Succeeded" for e in client.events("nb")), what="the Succeeded event")
    with pytest.raises(InvalidJob) as refused:
        client.submit(job_file(tmp_path, E2EJob("x", "pytorch", {"Chief": Role(1)})))
    assert any(line.startswith("spec.replicaSpecs.Chief:") for line in refused.value.lines)
    client.submit(E2EJob("nb-fail", "pytorch", {"Master": Role(1, (Run(2, 0.3),), "Never")}).body(backend.namespace))
    with pytest.raises(JobEnded) as ended:
        client.wait("nb-fail", "Succeeded", timeout=120)
    assert ended.value.job.status is not None
    assert ended.value.job.status.phase.value == "Failed"


def test_the_client_page_s_python_runs_as_written(backend: Kube, e2e, tmp_path, monkeypatch):
    """docs/client.md's Python block, run against the local control plane with its job file and namespace."""
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    ok = E2EJob("docs-ok", "pytorch", {"Master": Role(1, (Run(0, 0.3),))})
    job_file(tmp_path, ok).rename(tmp_path / "job.yaml")
    backend.submit(E2EJob("a-job-that-fails", "pytorch", {"Master": Role(1, (Run(1, 0.3),), "Never")}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(e2e.kubeconfig))
    printed: list[str] = []
    exec(code, {"NAMESPACE": backend.namespace, "print": lambda *a: printed.append(" ".join(map(str, a)))})
    assert printed[0] == "Succeeded 0"  # a StrEnum prints as its value
    assert "docs-ok pytorch Succeeded" in printed
    assert "['docs-ok-master-0']" in printed
    assert printed[-1].startswith("ended: ")
    backend.wait(lambda: backend.get("mljobs", "docs-ok") is None, what="the page's job deleted")
