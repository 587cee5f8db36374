"""MLJobs dispatched by Kueue's MultiKueue from a manager cluster to worker clusters, all real: three control planes
on loopback, Kueue v0.17 on each, mljob on each.

The manager is the session's control plane; the module starts two workers. Each test, in its namespace, sets up
MultiKueue as Kueue's documentation does (docs/multicluster.md): a kubeconfig Secret per worker in ``kueue-system``,
a MultiKueueCluster per worker, a MultiKueueConfig, an AdmissionCheck of controller ``kueue.x-k8s.io/multikueue``,
a ClusterQueue with that check and a LocalQueue on the manager, and on each worker a ClusterQueue and a LocalQueue
of the same name. An MLJob with ``spec.managedBy: kueue.x-k8s.io/multikueue`` and the queue label is submitted to
the manager: the manager's mljob makes its Workload and nothing else; Kueue copies the job to a worker that admits
it, whose mljob adopts the Workload MultiKueue made there and runs the pods (kwok plays them); Kueue copies the
worker's status back.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import KUEUE, E2EJob, Forever, Kube, OperatorProcess, Role

from controlplane import ControlPlane
from controlplane.cluster import KUEUE_NAMESPACE

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "research"
MULTIKUEUE = "kueue.x-k8s.io/multikueue"
TIMES: dict[str, list[float]] = {"submit -> pods running on the worker": [], "worker Succeeded -> manager": []}


class Worker:
    """A worker cluster: its control plane, its Kueue, its mljob (every namespace), the admin's client."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.cp = ControlPlane(workdir / name, log=print).start()
        self.admin = Kube(self.cp.kubeconfig, "default")
        # Before Kueue, and before the manager connects: MultiKueue watches here every kind the manager's Kueue
        # integrates (MLJob, and Kubeflow's PyTorchJob, TFJob and MPIJob).
        self.admin.install_crd()
        self.cp.kubectl("apply", "--server-side", "-k", str(ROOT / "crds" / "kubeflow"))
        self.cp.start_kueue()
        self.operator = OperatorProcess(
            self.cp.kubeconfig,
            "",
            workdir / f"{name}-operator.log",
            args=["--all-namespaces", "--standalone", "--kubeflow", "PyTorchJob"],
        ).start()

    def kube(self, namespace: str) -> Kube:
        return self.admin.other(namespace)

    def stop(self) -> None:
        self.operator.stop()
        self.cp.stop()


@pytest.fixture(scope="module")
def workers(kueue: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    """Two worker clusters for the module (the manager's Kueue, the session's, is started first)."""
    workdir = tmp_path_factory.mktemp("multikueue")
    started: list[Worker] = []
    try:
        for name in ("worker1", "worker2"):
            started.append(Worker(name, workdir))
        yield started
    finally:
        for worker in started:
            worker.stop()
        for kind, seconds in TIMES.items():
            if seconds:
                print(f"MultiKueue {kind}: {', '.join(f'{s:.1f} s' for s in seconds)}")


def create(b: Kube, plural: str, body: dict[str, Any], *, cluster: bool = True) -> None:
    group, version = KUEUE
    if cluster:
        b.custom.create_cluster_custom_object(group, version, plural, body)
    else:
        b.custom.create_namespaced_custom_object(group, version, b.namespace, plural, body)


def kueue_object(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "/".join(KUEUE), "kind": kind, "metadata": meta, "spec": spec}


def queues(b: Kube, name: str, cpus: int, check: str | None) -> None:
    """A ResourceFlavor, a ClusterQueue of ``cpus`` CPUs (with the admission check ``check``), the LocalQueue."""
    create(b, "resourceflavors", kueue_object("ResourceFlavor", name, {}))
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": b.namespace}},
        "resourceGroups": [
            {
                "coveredResources": ["cpu"],
                "flavors": [{"name": name, "resources": [{"name": "cpu", "nominalQuota": cpus}]}],
            }
        ],
    }
    if check is not None:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": check}]}
    create(b, "clusterqueues", kueue_object("ClusterQueue", name, spec))
    create(b, "localqueues", kueue_object("LocalQueue", QUEUE, {"clusterQueue": name}, b.namespace), cluster=False)


def delete_cluster_objects(b: Kube, name: str, plurals: tuple[str, ...]) -> None:
    import kubernetes

    group, version = KUEUE
    for plural in plurals:
        with contextlib.suppress(kubernetes.client.ApiException):
            b.custom.delete_cluster_custom_object(group, version, plural, name)


@contextlib.contextmanager
def multikueue(manager: Kube, workers: list[Worker], cpus: int) -> Iterator[list[Kube]]:
    """MultiKueue in front of ``workers`` for the manager's namespace; the workers' namespaces, as Kube."""
    name = manager.namespace[:50].rstrip("-")
    on_workers = []
    clusters = []
    with contextlib.suppress(Exception):
        manager.create_namespace(KUEUE_NAMESPACE)
    for worker in workers:
        kube = worker.kube(manager.namespace)
        kube.create_namespace()
        queues(kube, name, cpus, None)
        on_workers.append(kube)
        cluster = f"{name}-{worker.name}"
        secret = {
            "metadata": {"name": cluster, "namespace": KUEUE_NAMESPACE},
            "data": {"kubeconfig": base64.b64encode(worker.cp.inline_kubeconfig("multikueue").encode()).decode()},
        }
        manager.core.create_namespaced_secret(KUEUE_NAMESPACE, secret)
        source = {"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": cluster}}}
        create(manager, "multikueueclusters", kueue_object("MultiKueueCluster", cluster, source))
        clusters.append(cluster)
    create(manager, "multikueueconfigs", kueue_object("MultiKueueConfig", name, {"clusters": clusters}))
    check = {
        "controllerName": MULTIKUEUE,
        "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": name},
    }
    create(manager, "admissionchecks", kueue_object("AdmissionCheck", name, check))
    queues(manager, name, cpus * len(workers), name)
    try:
        manager.wait(lambda: active(manager, "admissionchecks", name), timeout=120, what="the MultiKueue check Active")
    except AssertionError as error:
        group, version = KUEUE
        states = {c: manager.custom.get_cluster_custom_object(group, version, "multikueueclusters", c).get("status")
                  for c in clusters}  # fmt: skip
        check = manager.custom.get_cluster_custom_object(group, version, "admissionchecks", name).get("status")
        raise AssertionError(f"{error}: clusters {states}, check {check}") from None
    try:
        yield on_workers
    finally:
        delete_cluster_objects(
            manager, name, ("clusterqueues", "admissionchecks", "multikueueconfigs", "resourceflavors")
        )
        for cluster in clusters:
            delete_cluster_objects(manager, cluster, ("multikueueclusters",))
            with contextlib.suppress(Exception):
                manager.core.delete_namespaced_secret(cluster, KUEUE_NAMESPACE)
        for kube in on_workers:
            delete_cluster_objects(kube, name, ("clusterqueues", "resourceflavors"))
            kube.delete_namespace()


def active(b: Kube, plural: str, name: str) -> bool:
    group, version = KUEUE
    found = b.custom.get_cluster_custom_object(group, version, plural, name)
    return any(
        c["type"] == "Active" and c["status"] == "True" for c in (found.get("status") or {}).get("conditions") or ()
    )


def dispatched_job(name: str) -> dict[str, Any]:
    job = E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),))}, requests={"cpu": "1"},
                 labels={"kueue.x-k8s.io/queue-name": QUEUE})  # fmt: skip
    return job.body("")


def submit(b: Kube, name: str) -> float:
    body = dispatched_job(name)
    body["metadata"]["namespace"] = b.namespace
    body["spec"]["managedBy"] = MULTIKUEUE
    b.create("mljobs", body)
    return time.monotonic()


def running_on(kube: Kube, name: str) -> bool:
    return kube.get("mljobs", name) is not None and [p["status"].get("phase") for p in kube.pods(name).values()] == [
        "Running"
    ]


def test_a_job_submitted_to_the_manager_runs_on_a_worker_and_its_status_comes_back(kueue, world, workers):
    w = world(operator=True)  # the manager's mljob: it makes the Workload and nothing else
    manager = w.kube
    with multikueue(manager, workers[:1], cpus=2) as (worker,):
        started = submit(manager, "a")
        worker.wait(lambda: running_on(worker, "a"), timeout=120, what="a's pod running on the worker")
        TIMES["submit -> pods running on the worker"].append(time.monotonic() - started)
        # On the manager: the Workload mljob made, no pod, and the worker's status copied onto the job.
        assert manager.pods("a") == {}
        wl = manager.custom.get_namespaced_custom_object(*KUEUE, manager.namespace, "workloads", "a")
        assert [r["kind"] for r in wl["metadata"]["ownerReferences"]] == ["MLJob"]
        manager.wait(lambda: manager.phase("a") == "Running", what="the worker's Running copied to the manager")
        copy = worker.job("a")
        assert "managedBy" not in copy["spec"]  # MultiKueue strips it from the copy: the worker's mljob runs it
        labels = copy["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/prebuilt-workload-name"] == "a"
        # The worker's mljob adopted the Workload MultiKueue made there, rather than making its own.
        remote = worker.custom.get_namespaced_custom_object(*KUEUE, worker.namespace, "workloads", "a")
        owners = [(r["kind"], r["uid"]) for r in remote["metadata"]["ownerReferences"] if r.get("controller")]
        assert owners == [("MLJob", copy["metadata"]["uid"])]

        worker.exit("a-master-0", 0)
        worker.wait_phase("a", "Succeeded")
        done = time.monotonic()
        manager.wait(lambda: manager.phase("a") == "Succeeded", timeout=120, what="Succeeded copied to the manager")
        TIMES["worker Succeeded -> manager"].append(time.monotonic() - done)
        assert manager.pods("a") == {}


def test_deleting_the_job_on_the_manager_deletes_it_on_the_worker(kueue, world, workers):
    w = world(operator=True)
    manager = w.kube
    with multikueue(manager, workers[:1], cpus=2) as (worker,):
        submit(manager, "b")
        worker.wait(lambda: running_on(worker, "b"), timeout=120, what="b's pod running on the worker")
        uid = worker.job("b")["metadata"]["uid"]
        manager.delete("mljobs", "b")
        worker.wait(lambda: worker.get("mljobs", "b") is None, timeout=120, what="the worker's copy of b to go")

        def owned() -> list[str]:  # its pods go with it (the garbage collector, by their ownerReference)
            pods = worker.list("pods")
            return [
                p["metadata"]["name"]
                for p in pods
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or ())
            ]

        worker.wait(lambda: owned() == [], timeout=120, what="b's pods on the worker to go")
        group, version = KUEUE
        assert worker.custom.list_namespaced_custom_object(group, version, worker.namespace, "workloads")["items"] == []


def test_two_jobs_go_to_two_workers_with_room_for_one_each(kueue, world, workers):
    w = world(operator=True)
    manager = w.kube
    with multikueue(manager, workers, cpus=1) as on_workers:
        for name in ("c", "d"):
            submit(manager, name)

        def both_running() -> bool:
            return sum(running_on(kube, job) for kube in on_workers for job in ("c", "d")) == 2

        manager.wait(both_running, timeout=180, what="c and d running, one on each worker")
        homes = {job: i for i, kube in enumerate(on_workers) for job in ("c", "d") if kube.get("mljobs", job)}
        assert sorted(homes.values()) == [0, 1], homes


def test_a_pytorchjob_goes_through_kueues_own_kubeflow_adapter_and_mljob_runs_it_on_the_worker(kueue, world, workers):
    """A PyTorchJob with runPolicy.managedBy kueue.x-k8s.io/multikueue: Kueue's built-in integration queues and
    dispatches it (its Workload, its copy on the worker, unsuspended there on admission); mljob serves the kind on
    both clusters, leaves the manager's alone and runs the worker's."""
    w = world(operator=False)
    w.operator.extra_args = ["--kubeflow", "PyTorchJob"]
    w.operator.start()
    manager = w.kube
    with multikueue(manager, workers[:1], cpus=2) as (worker,):
        container = {"name": "pytorch", "image": "busybox:1.36", "resources": {"requests": {"cpu": "1"}}}
        body = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "e", "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
            "spec": {
                # What Kueue's webhook would set (not registered on the local control planes): suspended, managed
                "runPolicy": {"suspend": True, "managedBy": MULTIKUEUE},
                "pytorchReplicaSpecs": {
                    "Master": {
                        "replicas": 1,
                        "restartPolicy": "OnFailure",
                        "template": {"spec": {"containers": [container]}},
                    }
                },
            },
        }
        started = time.monotonic()
        manager.custom.create_namespaced_custom_object("kubeflow.org", "v1", manager.namespace, "pytorchjobs", body)

        def running() -> bool:
            pods = worker.list("pods", "training.kubeflow.org/job-name=e")
            return [p["status"].get("phase") for p in pods] == ["Running"]

        worker.wait(running, timeout=120, what="e's master running on the worker")
        TIMES["submit -> pods running on the worker"].append(time.monotonic() - started)
        assert manager.list("pods", "training.kubeflow.org/job-name=e") == []
        worker.exit("e-master-0", 0)

        def succeeded() -> bool:
            job = manager.custom_get("kubeflow.org/v1", "pytorchjobs", "e") or {}
            conditions = (job.get("status") or {}).get("conditions") or ()
            return any(c["type"] == "Succeeded" and c["status"] == "True" for c in conditions)

        manager.wait(succeeded, timeout=120, what="the worker's Succeeded copied to the manager's PyTorchJob")
