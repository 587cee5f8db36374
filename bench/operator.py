"""What the operator costs: throughput to Running, API requests per job, latency, and idle cost.

    python bench/operator.py                 # 100 jobs of 4 pods, then a 60 s idle window
    python bench/operator.py --smoke         # 3 jobs and a 2 s idle window: proves the bench works (CI)
    python bench/operator.py --jobs 200 --replicas 8 --faults 0.05 --cut-watches 2

The real operator runs as a subprocess (the ``mljob operator`` command) against the local control plane
(controlplane/: etcd, kube-apiserver, controller-manager, scheduler, kwok; `make controlplane` builds it), as
in the end-to-end tests. Every job's pods are bound by the real scheduler to kwok's nodes and run for ``--run``
seconds; each worker restarts in place once, so each job goes through create -> Running -> Restarting ->
Running -> Succeeded. Times come from a watch on the MLJobs (when each phase was first seen), requests from the
API server's audit log (the operator's own identity), reconcile pass durations from the operator's
Prometheus metrics. Watch streams and discovery are the operator's standing cost and are reported apart;
everything else is work it chose to do. A benchmark, not a test: it prints numbers and asserts nothing about
them.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the control plane is a package of the repository

from controlplane import ControlPlane  # noqa: E402
from controlplane.audit import AuditLog  # noqa: E402
from controlplane.proxy import FaultProxy  # noqa: E402
from controlplane.waiting import until as wait_for  # noqa: E402
from mljob.core.crd import crd  # noqa: E402

COMMAND = [sys.executable, "-c", "from mljob.cli import main; main()", "operator"]
NAMESPACE = "bench"
USER = "bench-operator"


def job(name: str, replicas: int, run: float, forever: bool) -> dict[str, object]:
    """A PyTorch job whose pods kwok plays: each worker fails once halfway, restarts in place, then succeeds."""

    def template(runs: str) -> dict[str, Any]:
        container = {"name": "pytorch", "image": "busybox:1.36"}
        return {"metadata": {"annotations": {"kwok.mljob.io/runs": runs}}, "spec": {"containers": [container]}}

    master = "forever" if forever else f"0@{run}"
    worker = "forever" if forever else f"1@{run / 2} 0@{run / 2}"
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "framework": "pytorch",
            "replicaSpecs": {
                "Master": {"replicas": 1, "template": template(master)},
                "Worker": {"replicas": replicas - 1, "template": template(worker), "restartPolicy": "OnFailure"},
            },
            "runPolicy": {"activeDeadlineSeconds": 3600} if forever else {},
        },
    }


class Timeline:
    """When each job was created and first reached each phase, from a watch on the MLJobs."""

    def __init__(self, custom: Any) -> None:
        self.custom = custom
        self.created: dict[str, float] = {}
        self.phases: dict[str, dict[str, float]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kubernetes import watch

        version = ""
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, "mljob.io", "v1alpha1", NAMESPACE, "mljobs",
                    resource_version=version or None, timeout_seconds=5,
                )  # fmt: skip
                for event in stream:
                    obj = event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self.listen(obj)
            except Exception:
                time.sleep(0.1)

    def listen(self, obj: dict[str, Any]) -> None:
        name, now = obj["metadata"]["name"], time.monotonic()
        self.created.setdefault(name, now)
        phase = str((obj.get("status") or {}).get("phase") or "")
        if phase:
            self.phases.setdefault(name, {}).setdefault(phase, now)

    def first(self, name: str, phase: str) -> float | None:
        return self.phases.get(name, {}).get(phase)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The reconcile-duration histogram's sums and counts from the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("mljob_reconcile_duration_seconds_sum", "mljob_reconcile_duration_seconds_count")):
            key, value = line.rsplit(" ", 1)
            found[key] = found.get(key, 0.0) + float(value)
    return {
        "sum": sum(v for k, v in found.items() if k.startswith("mljob_reconcile_duration_seconds_sum")),
        "count": sum(v for k, v in found.items() if k.startswith("mljob_reconcile_duration_seconds_count")),
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> None:
    import kubernetes

    jobs, replicas = args.jobs, args.replicas
    tmp = Path(tempfile.mkdtemp(prefix="mljob-bench-"))
    with ControlPlane(tmp / "controlplane") as cp:
        cp.start()
        api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        ext = kubernetes.client.ApiextensionsV1Api(api)
        ext.create_custom_resource_definition(crd())
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition("mljobs.mljob.io").status.conditions or ()
            ),
            60,
            "the CRD",
        )
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        audit = AuditLog(cp.audit_log)
        kubeconfig = cp.user_kubeconfig(USER, ("system:masters",))
        proxy = None
        if args.faults or args.cut_watches:
            import ssl

            context = ssl.create_default_context(cafile=str(cp.ca))
            context.load_cert_chain(str(cp.pki / f"user-{USER}.crt"), str(cp.pki / f"user-{USER}.key"))
            proxy = FaultProxy(cp.server, context, error_rate=args.faults, cut_watches_after=args.cut_watches or None)
            proxy.start()
            kubeconfig = tmp / "proxy.kubeconfig"
            kubeconfig.write_text(
                f"apiVersion: v1\nkind: Config\nclusters: [{{name: p, cluster: {{server: '{proxy.url}'}}}}]\n"
                "users: [{name: p, user: {}}]\ncontexts: [{name: p, context: {cluster: p, user: p}}]\n"
                "current-context: p\n"
            )
        timeline = Timeline(custom)
        timeline.thread.start()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        port = free_port()
        with open(tmp / "operator.log", "wb") as log:
            proc = subprocess.Popen(
                [*COMMAND, "--namespace", NAMESPACE, "--standalone", "--metrics-port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            # Ready once its watches on MLJobs, pods and services are open, as the audit log shows.
            wait_for(
                lambda: len({r.resource for r in audit.requests(user=USER) if r.verb == "watch"}) >= 3, 60, "watches"
            )
            mark = audit.mark()
            started = time.monotonic()
            names = [f"bench-{i}" for i in range(jobs)]
            for name in names:
                custom.create_namespaced_custom_object(
                    "mljob.io", "v1alpha1", NAMESPACE, "mljobs", job(name, replicas, args.run, forever=False)
                )
            ended = ("Succeeded", "Failed")
            wait_for(lambda: all(any(timeline.first(n, p) for p in ended) for n in names), 900, "every job to end")
            finished = time.monotonic()
            # The terminal status is written before cleanPodPolicy's deletes: count those too.
            wait_for(lambda: not core.list_namespaced_service(NAMESPACE).items, 60, "services cleaned up")
            done = audit.requests(mark, user=USER)
            standing_verbs = ("watch",)
            work = Counter(r.key for r in done if r.verb not in standing_verbs and r.resource)
            standing = sum(1 for r in done if r.verb in standing_verbs or not r.resource)
            injected = sum(proxy.stats.injected.values()) if proxy else 0
            passes = scrape(port)
            if proxy is not None:
                proxy.error_rate, proxy.cut_watches_after = 0.0, None

            custom.create_namespaced_custom_object(
                "mljob.io", "v1alpha1", NAMESPACE, "mljobs", job("idle-job", replicas, args.run, forever=True)
            )
            wait_for(lambda: timeline.first("idle-job", "Running"), 60, "the idle job to run")
            time.sleep(2.0)  # the last status write and its echo settle
            moment = audit.mark()
            time.sleep(args.idle)  # the measurement: a window in which nothing changes
            idle_all = audit.requests(moment, user=USER)
        finally:
            proc.terminate()
            proc.wait()
            timeline.stopping.set()
            if proxy is not None:
                proxy.stop()

    startup = cp.startup_seconds
    to_running = [t - timeline.created[n] for n in names if (t := timeline.first(n, "Running")) is not None]
    last_running = max((timeline.first(n, "Running") or started) for n in names)
    to_done = [(timeline.first(n, "Succeeded") or finished) - timeline.created[n] for n in names]
    total = sum(work.values())
    mean_pass = passes["sum"] / passes["count"] * 1000 if passes["count"] else float("nan")
    print(
        f"operator benchmark on the local control plane: {jobs} jobs x {replicas} pods (pods run {args.run:g} s, "
        "each worker restarts in place once), "
        f"{args.faults:.0%} of writes failing"
        + (f", watches cut every {args.cut_watches:g} s" if args.cut_watches else "")
    )
    rows = [
        ("jobs Succeeded", f"{sum(1 for n in names if timeline.first(n, 'Succeeded'))} / {jobs}"),
        ("jobs/s to Running", f"{len(to_running) / max(last_running - started, 1e-9):.1f}"),
        ("time to Running p50 / p95 (ms)", f"{pct(to_running, 0.5) * 1000:.0f} / {pct(to_running, 0.95) * 1000:.0f}"),
        ("time to Succeeded p50 / max (s)", f"{pct(to_done, 0.5):.2f} / {max(to_done):.2f}"),
        ("all Succeeded after (s)", f"{finished - started:.1f}"),
        ("API requests per job", f"{total / jobs:.1f} ({total} in all, {injected} faults injected)"),
        ("reconcile passes per job", f"{passes['count'] / jobs:.1f}"),
        ("reconcile pass mean (ms)", f"{mean_pass:.1f}"),
        ("watch + discovery requests", f"{standing}"),
        ("control plane start-up (s)", f"{startup:.1f}"),
        (f"idle running job: requests in {args.idle:g} s", f"{len(idle_all)} (watch and discovery included)"),
        *((f"  idle: {verb} {resource}", f"{n}") for (verb, resource), n in Counter(r.key for r in idle_all).items()),
    ]
    print(table(rows))
    print("\nAPI requests by verb and resource (not counting watch and discovery):")
    print(
        table([(f"{verb} {resource}", f"{n} ({n / jobs:.1f} per job)") for (verb, resource), n in work.most_common()])
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--run", type=float, default=2.0, help="seconds each pod runs")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to watch an idle running job")
    parser.add_argument("--faults", type=float, default=0.0, help="fraction of writes that fail (500/409/429)")
    parser.add_argument("--cut-watches", type=float, default=0.0, help="cut every watch stream this often (s)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.replicas, args.idle, args.run = 3, 3, 2.0, 1.0
    bench(args)


if __name__ == "__main__":
    main()
