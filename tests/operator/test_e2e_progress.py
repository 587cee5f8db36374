"""The progress endpoint on the real API server: tokens the API server issues and reviews, reports from Kubeflow's
own SDK helper (``kubeflow`` 0.5.0 from PyPI, unmodified, in ``.venv-kubeflow-sdk``) and from mljob's, the job's
status and metrics moving, and every kind of bad report refused without disturbing the job.

kwok runs the pods here (no process reads the projected token), so the test asks the API server for the token a
kubelet would project: a TokenRequest for the pod's ServiceAccount, bound to the pod, with the job's audience. The
operator serves the endpoint on loopback (``--progress-port``), its certificate the one the pods are given.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import E2EJob, Forever, Kube, Role
from test_e2e_kubectl import kubectl as run_kubectl
from test_e2e_metrics import get, scrape

from controlplane.cluster import free_port
from mljob.core import progress
from mljob.operator.progress import RATE

ROOT = Path(__file__).resolve().parents[2]
SDK_PYTHON = ROOT / ".venv-kubeflow-sdk" / "bin" / "python"
SDK_REPORT = """
import sys
from kubeflow.trainer.backends.kubernetes.utils import update_trainjob_status
sent = update_trainjob_status(progress_percent=42, estimated_remaining_seconds=30, metrics={"loss": 0.5, "acc": 0.81})
print("SENT", sent)
sys.exit(0 if sent else 1)
"""
TRANSFORMERS_REPORT = """
from transformers import TrainerControl, TrainerState
from transformers.integrations.integration_utils import KubeflowCallback
callback = KubeflowCallback()  # as Trainer registers it when KUBEFLOW_TRAINER_SERVER_URL is set
state, control = TrainerState(max_steps=100, global_step=0), TrainerControl()
callback.on_train_begin(None, state, control)
callback.on_log(None, state, control, logs={"loss": 0.125, "learning_rate": 0.001})
state.global_step = 100
callback.on_train_end(None, state, control)
print("REPORTED")
"""
MLJOB_REPORT = """
import logging, sys
logging.basicConfig()
from mljob import progress
sys.exit(0 if progress.report(step=50, total=200, loss=0.25) else 1)
"""


def operator_world(world: Any) -> tuple[Any, int, int]:
    w = world(operator=False)
    port, metrics = free_port(), free_port()
    ns = w.kube.namespace
    w.operator.extra_args = [
        "--progress-port", str(port), "--webhook-secret", f"{ns}/mljob-progress-cert", "--metrics-port", str(metrics),
    ]  # fmt: skip
    w.operator.start()
    return w, port, metrics


def token_for(b: Kube, pod: str, job: str, seconds: int = 600) -> str:
    """The token the kubelet would project into ``pod``: bound to it, for ``job``'s audience."""
    from kubernetes import client

    core = client.CoreV1Api(b.api)
    body = b.get("pods", pod)
    assert body is not None
    account = body["spec"].get("serviceAccountName") or "default"
    try:  # the controller-manager makes it too: whichever comes first
        core.create_namespaced_service_account(b.namespace, {"metadata": {"name": account}})
    except client.ApiException as error:
        if error.status != 409:
            raise
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[progress.audience(b.namespace, job)],
            expiration_seconds=seconds,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod, uid=body["metadata"]["uid"]
            ),
        )
    )
    answer = core.create_namespaced_service_account_token(account, b.namespace, request)
    return str(answer.status.token)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    container = pod["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or ()}


def wiring(tmp: Path, pod: dict[str, Any], token: str) -> dict[str, str]:
    """The env the pod's container has, with the token and CA files where the kubelet would have put them."""
    env = env_of(pod)
    (tmp / "token").write_text(token)
    (tmp / "ca.crt").write_text(pod["metadata"]["annotations"][progress.CA_ANNOTATION])
    return {
        progress.ENV_URL: env[progress.ENV_URL],
        progress.ENV_TOKEN: str(tmp / "token"),
        progress.ENV_CA_CERT: str(tmp / "ca.crt"),
    }


def post(url: str, ca: Path, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    """POST ``body``; the answer's code and JSON body."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def kubectl(b: Kube, *args: str) -> str:
    done = run_kubectl(b, *args)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return done.stdout


def value(scraped: dict[str, Any], family: str, **labels: str) -> float:
    """The sum of ``family``'s samples whose labels include ``labels`` (a job's ``name`` among them)."""
    return sum(v for key, v in scraped.get(family, {}).items() if set(labels.items()) <= set(key))


def trainer(b: Kube, name: str) -> dict[str, Any]:
    return b.status(name).get("trainerStatus") or {}


def test_kubeflows_sdk_helper_and_mljobs_report_into_the_status_and_success_ends_at_100(world, e2e, tmp_path):
    w, port, metrics_port = operator_world(world)
    b = w.kube
    job = E2EJob("trains", "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(1, (Forever(),))})
    b.submit(job)
    b.wait_phase(job.name, "Running")
    pods = b.pods(job.name)
    master = pods[f"{job.name}-master-0"]
    env = env_of(master)
    assert env[progress.ENV_URL] == f"https://127.0.0.1:{port}" + progress.path(b.namespace, job.name)
    assert env[progress.ENV_TOKEN] == "/var/run/secrets/kubeflow/trainer/token"
    (volume,) = [v for v in master["spec"]["volumes"] if v["name"] == progress.VOLUME]
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["audience"] == progress.audience(b.namespace, job.name)
    assert "BEGIN CERTIFICATE" in master["metadata"]["annotations"][progress.CA_ANNOTATION]
    wired = wiring(tmp_path, master, token_for(b, master["metadata"]["name"], job.name))

    # Kubeflow's SDK, unmodified: its helper returns True only on HTTP 200.
    sdk = subprocess.run([str(SDK_PYTHON), "-c", SDK_REPORT], env={**os.environ, **wired}, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert sdk.returncode == 0, sdk.stdout + sdk.stderr
    moved = b.wait(lambda: trainer(b, job.name).get("progressPercentage") == 42 and b.status(job.name),
                   what="the SDK's report in the status")  # fmt: skip
    assert moved["progress"] == "42%"
    assert moved["eta"] == "30s"
    assert {"name": "loss", "value": "0.5"} in moved["trainerStatus"]["metrics"]
    assert moved["trainerStatus"]["lastUpdatedTime"]

    # mljob's helper: step and total, from which the percentage comes.
    mine = subprocess.run([sys.executable, "-c", MLJOB_REPORT], env={**os.environ, **wired}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert mine.returncode == 0, mine.stderr
    moved = b.wait(lambda: trainer(b, job.name).get("step") == 50 and b.status(job.name), what="mljob's report")
    assert moved["trainerStatus"]["progressPercentage"] == 25
    assert moved["trainerStatus"]["totalSteps"] == 200
    metrics = {m["name"]: m["value"] for m in moved["trainerStatus"]["metrics"]}
    assert metrics["loss"] == "0.25"
    assert metrics["acc"] == "0.81"  # the latest of each name
    assert [c["name"] for c in moved["metricHistory"]][:2] == ["loss", "acc"]
    scraped = b.wait(lambda: value(scrape(metrics_port), "mljob_job_progress_percent", name=job.name) == 25
                     and scrape(metrics_port), what="the progress gauge")  # fmt: skip
    assert value(scraped, "mljob_job_step", name=job.name) == 50
    assert value(scraped, "mljob_job_metric", name=job.name, metric="loss") == 0.25

    b.exit(f"{job.name}-master-0", 0)  # PyTorch's rule: the master's success is the job's (the workers are stopped)
    b.wait_phase(job.name, "Succeeded")
    done = b.wait(lambda: trainer(b, job.name).get("progressPercentage") == 100 and b.status(job.name),
                  what="100% on success")  # fmt: skip
    assert done["progress"] == "100%"
    assert done["eta"] == ""
    assert done["trainerStatus"]["step"] == 200
    shown = kubectl(b, "get", f"mljob/{job.name}", "--no-headers")  # the printer columns
    assert shown.split()[1:4] == ["pytorch", "Succeeded", "100%"], shown
    late, said = post(wired[progress.ENV_URL], tmp_path / "ca.crt", b'{"trainerStatus": {"progressPercentage": 7}}',
                      (tmp_path / "token").read_text())  # fmt: skip
    assert late == 409, said
    assert trainer(b, job.name)["progressPercentage"] == 100
    assert get(f"http://127.0.0.1:{metrics_port}/metrics") is not None


def test_transformers_kubeflow_callback_reports_unchanged(world, e2e, tmp_path):
    """HuggingFace Transformers' ``KubeflowCallback`` (5.23.0), which its Trainer adds when Trainer's env is set:
    its start report (0%, ``total_steps``) and its forced end report (100%, the logged loss) reach the status."""
    w, _, _ = operator_world(world)
    b = w.kube
    job = E2EJob("hf", "pytorch", {"Master": Role(1, (Forever(),))})
    b.submit(job)
    b.wait_phase(job.name, "Running")
    pod = b.get("pods", "hf-master-0")
    assert pod is not None
    wired = wiring(tmp_path, pod, token_for(b, "hf-master-0", job.name))
    done = subprocess.run([str(SDK_PYTHON), "-c", TRANSFORMERS_REPORT], env={**os.environ, **wired},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    status = b.wait(lambda: trainer(b, job.name).get("progressPercentage") == 100 and b.status(job.name),
                    what="the callback's end report")  # fmt: skip
    metrics = {m["name"]: m["value"] for m in status["trainerStatus"]["metrics"]}
    assert metrics["loss"] == "0.125"
    assert metrics["total_steps"] == "100"  # from its start report: the latest of each name is kept
    assert status["trainerStatus"]["estimatedRemainingSeconds"] == 0
    assert b.phase(job.name) == "Running"  # 100% reported; the job ends when its pods do


def test_bad_reports_are_refused_with_a_clear_code_and_the_job_runs_on(world, e2e, tmp_path):
    w, _, _ = operator_world(world)
    b = w.kube
    forever = (Forever(),)
    a, other = (
        E2EJob("a", "pytorch", {"Master": Role(1, forever)}),
        E2EJob("b", "pytorch", {"Master": Role(1, forever)}),
    )
    for job in (a, other):
        b.submit(job)
    for job in (a, other):
        b.wait_phase(job.name, "Running")
    pod_a, pod_b = b.get("pods", "a-master-0"), b.get("pods", "b-master-0")
    assert pod_a is not None
    assert pod_b is not None
    wired = wiring(tmp_path, pod_a, token_for(b, "a-master-0", "a"))
    url, ca, token = wired[progress.ENV_URL], tmp_path / "ca.crt", (tmp_path / "token").read_text()
    good = b'{"trainerStatus": {"step": 10, "totalSteps": 100}}'

    assert post(url, ca, good, None)[0] == 401
    assert post(url, ca, good, "not-a-token")[0] == 403
    code, said = post(url, ca, good, token_for(b, "b-master-0", "b"))  # job b's token, at job a's endpoint
    assert code == 403, said
    assert "not valid for mljobs/a" in said["message"], said
    code, said = post(url, ca, good, token_for(b, "b-master-0", "a"))  # a's audience, but bound to b's pod
    assert code == 403, said
    assert "not a replica of mljobs/a" in said["message"], said
    code, said = post(url, ca, b'{"trainerStatus": {"progressPercentage": ', token)
    assert code == 422, said
    assert said["reason"] == "Invalid", said
    code, said = post(url, ca, b'{"trainerStatus": {"progressPercentage": 250}}', token)
    assert code == 422, said
    assert "trainerStatus.progressPercentage" in said["message"], said
    code, said = post(url, ca, b'{"trainerStatus": {"step": 500, "totalSteps": 100}}', token)
    assert code == 422, said
    assert "trainerStatus.step" in said["message"], said
    code, said = post(url, ca, b'{"trainerStatus": {"metrics": [{"name": "loss", "value": "nan"}]}}', token)
    assert code == 422, said
    assert "metrics[0].value" in said["message"], said
    assert post(url, ca, b"x" * (progress.MAX_BODY + 1), token)[0] == 413
    assert post(url.replace("/status", "/statuz"), ca, good, token)[0] == 404
    codes = [post(url, ca, good, token)[0] for _ in range(120)]  # a flood: past the burst, refused
    assert 429 in codes, codes
    assert 200 in codes, codes

    # Nothing of that reached the job: the good reports did, as one status, and job b never heard of it.
    b.wait(lambda: trainer(b, "a").get("step") == 10, what="the good reports")
    assert b.phase("a") == "Running"
    assert b.phase("b") == "Running"
    assert "trainerStatus" not in b.status("b")
    assert w.operator.proc is not None
    assert w.operator.proc.poll() is None


def test_reports_many_a_second_cost_one_patch_per_interval(world, e2e, tmp_path):
    w, _, metrics_port = operator_world(world)
    b = w.kube
    job = E2EJob("busy", "pytorch", {"Master": Role(1, (Forever(),))})
    b.submit(job)
    b.wait_phase(job.name, "Running")
    pod = b.get("pods", "busy-master-0")
    assert pod is not None
    wired = wiring(tmp_path, pod, token_for(b, "busy-master-0", job.name))
    url, ca, token = wired[progress.ENV_URL], tmp_path / "ca.crt", (tmp_path / "token").read_text()
    started = time.monotonic()
    sent = 0
    steps = int(2 * RATE) - 1  # as fast as the client can, within the endpoint's burst: every one is taken
    for step in range(1, steps + 1):
        body = json.dumps(
            {
                "trainerStatus": {
                    "step": step,
                    "totalSteps": steps,
                    "metrics": [{"name": "loss", "value": str(1 / step)}],
                }
            }
        )
        code, _ = post(url, ca, body.encode(), token)
        sent += code == 200
    took = time.monotonic() - started
    b.wait(lambda: trainer(b, job.name).get("step") == steps, what="the last report in the status")
    patches = value(scrape(metrics_port), "mljob_progress_patches_total")
    print(f"{sent} reports in {took:.1f} s: {patches:.0f} status patches")
    assert sent == steps
    assert 1 <= patches <= took / progress.INTERVAL + 2, (patches, took)
    history = b.status(job.name)["metricHistory"][0]
    assert history["name"] == "loss"
    assert history["x"][-1] == steps
    assert len(history["x"]) >= 2
