"""The real operator's MLJobs on the agent's Node: the scheduler binds their pods there, they run for real.

The operator (``mljob operator``) runs as a subprocess for each test's namespace; the pods are pinned to the
agent's Node by a nodeSelector (the control plane also has a kwok Node). Replicas count their runs in a hostPath
folder of the test's, since a recreated pod gets a fresh emptyDir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentkit import TIMEOUT, processes, status_of

from controlplane.waiting import until

SCRIPT = "import os; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'])"
MLJOB = [sys.executable, "-c", "from mljob.cli import main; main()"]


def job(name: str, node: str, container: dict[str, Any], policy: str = "OnFailure", **spec: Any) -> dict[str, Any]:
    def role(replicas: int) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": policy,
            "template": {
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "pytorch", "image": "none", **container}],
                    **spec,
                }
            },
        }

    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {"framework": "pytorch", "replicaSpecs": {"Master": role(1), "Worker": role(2)}},
    }


class Jobs:
    """MLJobs in the test's namespace, through the official client."""

    def __init__(self, env: Any) -> None:
        import kubernetes

        self.env = env
        self.custom = kubernetes.client.CustomObjectsApi(env.api.api_client)

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("mljob.io", "v1alpha1", self.env.namespace, "mljobs", body)

    def get(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object("mljob.io", "v1alpha1", self.env.namespace, "mljobs", name)
        )

    def phase(self, name: str, phase: str, timeout: float = TIMEOUT * 2) -> dict[str, Any]:
        until(lambda: (self.get(name).get("status") or {}).get("phase") == phase, timeout, f"{name} to be {phase}")
        return self.get(name)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object("mljob.io", "v1alpha1", self.env.namespace, "mljobs", name)


@pytest.fixture
def jobs(env, tmp_path: Path, request: pytest.FixtureRequest):
    """The operator for the test's namespace, and its jobs."""
    log = tmp_path / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(env.cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        operator = subprocess.Popen(
            [*MLJOB, "operator", "--namespace", env.namespace, "--standalone"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield Jobs(env)
    operator.terminate()
    operator.wait(30)
    print(f"----- operator log (tail) -----\n{log.read_text(errors='replace')[-6000:]}")


def test_an_mljob_runs_on_the_agent_to_succeeded(env, jobs):
    body = job("ddp", env.node, {"command": ["python", "-c", SCRIPT]})
    body["spec"]["runPolicy"] = {"cleanPodPolicy": "None"}  # the job succeeds with its master: keep the workers
    jobs.create(body)
    jobs.phase("ddp", "Succeeded")
    pods = {p.metadata.name: p for p in env.api.list_namespaced_pod(env.namespace).items}
    assert set(pods) == {"ddp-master-0", "ddp-worker-0", "ddp-worker-1"}
    for name, pod in pods.items():
        assert pod.spec.node_name == env.node
        finished = env.phase(name, "Succeeded")
        assert status_of(finished, "pytorch")["state"]["terminated"]["exitCode"] == 0
    rank = {"ddp-master-0": 0, "ddp-worker-0": 1, "ddp-worker-1": 2}
    for name, r in rank.items():
        assert env.kubectl("logs", name) == f"rank {r} of 3 ddp-master-0.ddp.{env.namespace}.svc\n"
    environ = {**os.environ, "KUBECONFIG": str(env.cp.kubeconfig)}
    printed = subprocess.run(
        [*MLJOB, "logs", "ddp", "--namespace", env.namespace],
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert f"[worker-1] rank 2 of 3 ddp-master-0.ddp.{env.namespace}.svc" in printed.stdout.splitlines()


def counting(script_end: str) -> str:
    """A replica's shell script that counts its runs in /runs/<pod name> (a hostPath: it outlives the pod)."""
    return f"n=$(cat /runs/$POD 2>/dev/null || echo 0); n=$((n+1)); echo $n > /runs/$POD; echo run $n; {script_end}"


POD_NAME = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def runs_volume(folder: Path) -> dict[str, Any]:
    return {"volumes": [{"name": "runs", "hostPath": {"path": str(folder)}}]}


def test_a_replica_killed_by_a_signal_under_exit_code_is_recreated_and_the_job_succeeds(env, jobs, tmp_path):
    # The master's first run is SIGKILLed (as by the OOM killer): 137, retryable under ExitCode; the job succeeds
    # when the master does (PyTorch's rule), so only its second run can end the job.
    script = counting(
        'if [ "$POD" = ddp-master-0 ] && [ $n = 1 ]; then python -c "import os; os.kill(os.getpid(), 9)"; fi'
    )
    container = {
        "command": ["sh", "-c", script],
        "env": POD_NAME,
        "volumeMounts": [{"name": "runs", "mountPath": "/runs"}],
    }
    jobs.create(job("ddp", env.node, container, policy="ExitCode", **runs_volume(tmp_path)))
    done = jobs.phase("ddp", "Succeeded")
    assert (tmp_path / "ddp-master-0").read_text() == "2\n"
    assert done["status"]["restartCount"] == 1
    assert env.kubectl("logs", "ddp-master-0") == "run 2\n"


def test_in_place_restarts_under_on_failure_count_against_backoff_limit(env, jobs, tmp_path):
    container = {
        # The master runs on (the job would succeed with it); worker-0 fails every run.
        "command": ["sh", "-c", counting("case $POD in *master*) sleep 1000 & wait;; *worker-0) exit 1;; esac")],
        "env": POD_NAME,
        "volumeMounts": [{"name": "runs", "mountPath": "/runs"}],
    }
    body = job("ddp", env.node, container, **runs_volume(tmp_path))
    body["spec"]["runPolicy"] = {"backoffLimit": 2}
    jobs.create(body)
    failed = jobs.phase("ddp", "Failed")
    assert failed["status"]["restartCount"] >= 2
    pod = env.read("ddp-worker-0")
    assert pod is None or status_of(pod, "pytorch")["restartCount"] >= 2


def test_deleting_a_running_job_stops_every_process(env, jobs):
    mark = uuid.uuid4().hex
    container = {
        "command": ["sh", "-c", "sleep 1000 & wait"],
        "env": [{"name": "MLJOB_TEST_MARK", "value": mark}],
    }
    jobs.create(job("forever", env.node, container, policy="Never"))
    jobs.phase("forever", "Running")
    until(lambda: len(processes(mark)) >= 6, TIMEOUT, "every replica's processes")
    jobs.delete("forever")
    until(lambda: not env.api.list_namespaced_pod(env.namespace).items, TIMEOUT, "the job's pods to be deleted")
    assert processes(mark) == []
