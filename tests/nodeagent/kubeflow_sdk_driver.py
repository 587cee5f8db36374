"""Run one Kubeflow v1 job as a user of Kubeflow's ``kubeflow-training`` SDK (1.9.4) does, with the SDK alone; print
what the SDK got, as JSON, on stdout.

Runs in ``.venv-kubeflow-1.9.4`` (``make setup-kubeflow-e2e``; the wheel pins kubernetes<36), started by
tests/nodeagent/test_cluster_examples.py, never imported by the project. Nothing here reads the cluster but the SDK's
``TrainingClient``:

1. the job file (a PyTorchJob or TFJob as JSON) becomes the SDK's model (``KubeflowOrgV1PyTorchJob``, ...) the way
   the SDK itself turns an API answer into one (``get_job``, ``list_jobs``: ``ApiClient().deserialize`` of a
   ``utils.FakeResponse``);
2. ``create_job(job=...)``, then ``wait_for_job_conditions`` (Succeeded; the SDK raises if the job Failed) and
   ``is_job_succeeded``;
3. ``get_job_logs(is_master=True)``: the pods labelled ``training.kubeflow.org/job-role=master``, container
   ``pytorch`` / ``tensorflow`` (``constants.JOB_PARAMETERS``); and for each ``--replica`` (``worker-1``),
   ``get_job_logs(is_master=False, replica_type=..., replica_index=...)`` once ``get_job_pods`` shows that pod
   finished (a DDP worker may end a moment after its master, and the job with it);
4. the phase of each of the job's pods (``get_job_pods``), then ``delete_job``: under Kubeflow's default
   ``cleanPodPolicy: None`` a TF ParameterServer job's workers serve until their job goes, as under training-operator.

    python kubeflow_sdk_driver.py --kubeconfig KUBECONFIG --namespace NS --job job.json [--replica worker-0 ...]

The SDK's own status lines (``NAME STATE TIME``, logged at DEBUG) go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from kubeflow.training import TrainingClient, constants  # type: ignore[import-not-found]
from kubeflow.training.api_client import ApiClient  # type: ignore[import-not-found]
from kubeflow.training.utils import utils  # type: ignore[import-not-found]

FINISHED = ("Succeeded", "Failed")
"""Pod phases after which a pod's log is complete."""


def finished_pod(client: Any, name: str, namespace: str, role: str, index: int, timeout: float) -> str:
    """The phase of the job's pod ``role``-``index`` once it has finished, polled through ``get_job_pods``."""
    deadline = time.monotonic() + timeout
    while True:
        pods = client.get_job_pods(name, namespace, replica_type=role, replica_index=index)
        phases = [pod.status.phase for pod in pods if pod.status is not None]
        if phases and all(phase in FINISHED for phase in phases):
            return str(phases[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{role}-{index} of {namespace}/{name} still {phases or 'absent'} after {timeout:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--job", required=True, type=Path, help="the PyTorchJob or TFJob, as JSON")
    parser.add_argument("--wait-timeout", type=int, default=300, help="wait_for_job_conditions' wait_timeout (s)")
    parser.add_argument("--replica", action="append", default=[], help="also read this replica's log (worker-1)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubeflow.training").setLevel(logging.DEBUG)

    body = json.loads(args.job.read_text())
    kind, name, namespace = body["kind"], body["metadata"]["name"], args.namespace
    api = ApiClient()
    job = api.deserialize(utils.FakeResponse(body), constants.JOB_PARAMETERS[kind]["model"])

    client = TrainingClient(config_file=args.kubeconfig, namespace=namespace, job_kind=kind)
    started = time.monotonic()
    client.create_job(job=job, namespace=namespace)
    # A second's polling, not the default 15 s: the examples train in seconds.
    done = client.wait_for_job_conditions(name, namespace, kind, wait_timeout=args.wait_timeout, polling_interval=1)
    seconds = time.monotonic() - started
    succeeded = client.is_job_succeeded(name, namespace, kind)
    master_logs, _ = client.get_job_logs(name, namespace, kind, is_master=True)

    replica_logs: dict[str, dict[str, str]] = {}
    phases: dict[str, str] = {}
    for replica in args.replica:
        role, index = replica.rsplit("-", 1)
        phases[replica] = finished_pod(client, name, namespace, role, int(index), 60)
        replica_logs[replica], _ = client.get_job_logs(
            name, namespace, kind, is_master=False, replica_type=role, replica_index=int(index)
        )

    pods = {pod.metadata.name: pod.status.phase for pod in client.get_job_pods(name, namespace)}
    client.delete_job(name, namespace, kind)

    result = {
        "kind": kind,
        "name": name,
        "model": type(job).__name__,
        "seconds": seconds,
        "succeeded": succeeded,
        "job": api.sanitize_for_serialization(done),
        "master_pods": client.get_job_pod_names(name, namespace, is_master=True),
        "master_logs": master_logs,
        "replica_phases": phases,
        "replica_logs": replica_logs,
        "pods_at_end": pods,
    }
    json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
