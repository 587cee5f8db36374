"""The real operator's MLJob on the agent's Node: the scheduler binds its pods there, they run, the job succeeds."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import TIMEOUT, status_of

from controlplane.waiting import until

SCRIPT = "import os; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'])"


def job(name: str, node: str) -> dict:
    def role(replicas: int) -> dict:
        return {
            "replicas": replicas,
            "restartPolicy": "OnFailure",
            "template": {
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "pytorch", "image": "none", "command": ["python", "-c", SCRIPT]}],
                }
            },
        }

    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {"framework": "pytorch", "replicaSpecs": {"Master": role(1), "Worker": role(2)}},
    }


def test_an_mljob_through_the_operator_runs_on_the_agent_to_succeeded(env, tmp_path):
    log = tmp_path / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(env.cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", "from mljob.cli import main; main()", "operator"]
    with open(log, "wb") as out:
        operator = subprocess.Popen(
            [*command, "--namespace", env.namespace, "--standalone"], env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        import kubernetes

        custom = kubernetes.client.CustomObjectsApi(env.api.api_client)
        custom.create_namespaced_custom_object("mljob.io", "v1alpha1", env.namespace, "mljobs", job("ddp", env.node))

        def phase() -> str | None:
            got = custom.get_namespaced_custom_object("mljob.io", "v1alpha1", env.namespace, "mljobs", "ddp")
            return (got.get("status") or {}).get("phase")

        until(lambda: phase() == "Succeeded", TIMEOUT * 2, "the MLJob to succeed")
    except BaseException:
        print(log.read_text(errors="replace")[-6000:])
        raise
    finally:
        operator.terminate()
        operator.wait(30)
    pods = {p.metadata.name: p for p in env.api.list_namespaced_pod(env.namespace).items}
    assert set(pods) == {"ddp-master-0", "ddp-worker-0", "ddp-worker-1"}
    for name, pod in pods.items():
        assert pod.spec.node_name == env.node
        assert pod.status.phase == "Succeeded"
        assert status_of(env.read(name), "pytorch")["state"]["terminated"]["exitCode"] == 0
    rank = {"ddp-master-0": 0, "ddp-worker-0": 1, "ddp-worker-1": 2}
    for name, r in rank.items():
        assert env.kubectl("logs", name) == f"rank {r} of 3 ddp-master-0.ddp.{env.namespace}.svc\n"
    mljob_logs = subprocess.run(
        [*command[:-1], "logs", "ddp", "--namespace", env.namespace],
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert f"[worker-1] rank 2 of 3 ddp-master-0.ddp.{env.namespace}.svc" in mljob_logs.stdout.splitlines()
