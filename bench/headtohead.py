"""mljob beside Kubeflow's training-operator v1.8.1 and beside the raw limit, on the real local control plane.

    python bench/headtohead.py                          # 200 jobs x 4 pods each side, 1,000 jobs for the restart
    python bench/headtohead.py --jobs 20 --restart-jobs 50 --json out.json
    python bench/headtohead.py --smoke                  # 3 jobs x 2 pods, every side (CI)

Four sides (bench/sides.py): mljob on MLJobs; mljob on PyTorchJobs (``--kubeflow PyTorchJob``, mljob's own CRD for
the kind); training-operator on the very same PyTorchJobs; the raw limit.

Each side gets a fresh control plane (controlplane/: etcd, kube-apiserver, controller-manager, scheduler, kwok;
`make controlplane` builds it, training-operator included) and its own user, so the audit log counts its
requests apart. On each: the operator starts and opens its watches; the bench creates N jobs of R pods (32
creates in flight) and follows jobs, pods and services by watch; once every pod runs and every job says so,
an idle window counts what the operator sends while nothing changes; then the bench ends every pod's run
(kwok's ``kwok.mljob.io/exit`` annotation, exit code 0) and waits for every job to be Succeeded and for the
operator's cleanup (mljob deletes an MLJob's service; at a PyTorchJob's default cleanPodPolicy None, mljob and
training-operator v1.8.1 delete nothing). bench/README.md explains each figure. On each mljob side's control plane
the restart scenario follows: K more jobs running, the operator stopped and started again, and a new job created at
once: how long until it acts on that job, and what it writes about the K jobs meanwhile (it should write nothing).

A benchmark, not a test: it prints numbers and asserts nothing about them. Timings on a busy machine are
distorted; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the control plane is a package of the repository

from observe import Timeline, Usage, follow, pct, usage  # noqa: E402
from report import report  # noqa: E402
from sides import EXIT, SIDES, Side  # noqa: E402

from controlplane import ControlPlane  # noqa: E402
from controlplane.audit import AuditLog, Request  # noqa: E402
from controlplane.cluster import Node  # noqa: E402
from mljob.kube import Api, Credentials  # noqa: E402

NAMESPACE = "bench"
PROBE_NAMESPACE = "bench-probe"
DRIVER = "bench-driver"
TO1 = "training-operator"
WRITES = ("create", "update", "patch", "delete", "deletecollection")
NODES = tuple(Node(f"bench-node-{i}", pods="3000") for i in range(3))
"""Room for the restart scenario's thousands of pods beside the main run's."""


class Run:
    """One side on one control plane: the operator process, the bench's client and timeline, the audit log."""

    def __init__(self, side: Side, cp: ControlPlane, workdir: Path, args: argparse.Namespace) -> None:
        self.side, self.cp, self.workdir, self.args = side, cp, workdir, args
        self.audit = AuditLog(cp.audit_log)
        self.log = workdir / f"{side.name}.log"
        self.kubeconfig = cp.user_kubeconfig(side.user, ("system:masters",))
        self.api = Api(Credentials.load(str(cp.user_kubeconfig(DRIVER, ("system:masters",)))))
        self.stop = asyncio.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start_operator(self) -> float:
        """Start the operator; seconds until its watches were open."""
        started = time.monotonic()
        self.proc = self.side.start(self.cp, self.kubeconfig, self.log)
        await self.side.ready(self.audit, self.proc, self.log)
        return time.monotonic() - started

    def stop_operator(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def timeline(self, namespace: str) -> Timeline:
        timeline = Timeline(self.side.phase, self.side.replicas)
        paths = follow(self.api, timeline, self.side.jobs_path(namespace), namespace, self.stop)
        self.tasks += [asyncio.create_task(w) for w in paths]  # type: ignore[arg-type]
        return timeline

    async def submit(self, timeline: Timeline, names: Sequence[str], namespace: str, replicas: int) -> None:
        """Create the jobs, as many in flight as the client allows (32)."""

        async def one(name: str) -> None:
            await self.api.request("POST", self.side.jobs_path(namespace), self.side.job(name, namespace, replicas))
            timeline.expect(name, replicas)

        await asyncio.gather(*(one(n) for n in names))

    async def finish_pods(self, timeline: Timeline, names: Sequence[str], namespace: str) -> None:
        """End every pod's current run with exit code 0, as the kubelet would report a finished container."""
        patch = {"metadata": {"annotations": {EXIT: "0 - 0"}}}
        pods = [p for n in names for p in timeline.jobs[n].pods_created]
        await asyncio.gather(
            *(
                self.api.request(
                    "PATCH", f"/api/v1/namespaces/{namespace}/pods/{p}", patch, "application/merge-patch+json"
                )
                for p in pods
            )
        )

    def requests(self, since: int, until: int | None = None) -> list[Request]:
        found = self.audit.requests(since, user=self.side.user)
        if until is None:
            return found
        later = {r.audit_id for r in self.audit.requests(until, user=self.side.user)}
        return [r for r in found if r.audit_id not in later]

    def usage(self) -> Usage:
        assert self.proc is not None
        return usage(self.proc.pid)


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def profile(run: Run, folder: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the operator (a Python one) from now until the main run ends: collapsed stacks in ``folder``."""
    if folder is None or run.side.name == TO1 or run.proc is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{run.side.name}.txt"
    args = [py_spy(), "record", "--pid", str(run.proc.pid), "--format", "raw", "--rate", "100", "--nonblocking"]
    return subprocess.Popen([*args, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def all_of(timeline: Timeline, names: Sequence[str], test: Callable[[Any], bool]) -> Callable[[], bool]:
    return lambda: all(n in timeline.jobs and test(timeline.jobs[n]) for n in names)


async def run_side(side: Side, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The whole scenario on one side; its figures as plain data."""
    print(f"--- {side.name}: starting a control plane", flush=True)
    with ControlPlane(workdir / "controlplane", nodes=NODES) as cp:
        await asyncio.to_thread(cp.start)
        run = Run(side, cp, workdir, args)
        try:
            return await scenario(run, args)
        finally:
            run.stop.set()
            run.stop_operator()
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)
            await run.api.close()


async def scenario(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    side, n, replicas, timeout = run.side, args.jobs, args.replicas, args.timeout
    await side.install(run.cp, run.api)
    for namespace in (NAMESPACE, PROBE_NAMESPACE):
        await run.api.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    ready_s = await run.start_operator()
    profiler = profile(run, args.profile)
    timeline = run.timeline(NAMESPACE)
    # The bench's own watches are open (their LISTs answered) before the first job is created.
    await asyncio.sleep(0.5)
    print(f"--- {side.name}: operator ready in {ready_s:.1f} s; {n} jobs x {replicas} pods", flush=True)

    names = [f"job-{i}" for i in range(n)]
    mark, before = run.audit.mark(), run.usage()
    started = time.monotonic()
    await run.submit(timeline, names, NAMESPACE, replicas)
    submitted = time.monotonic()
    all_running = await timeline.until(
        all_of(timeline, names, lambda t: t.all_running is not None), timeout, "every pod to run"
    )
    running_mark, running_cpu = run.audit.mark(), run.usage().cpu
    jobs_running = await timeline.until(
        all_of(timeline, names, lambda t: "Running" in t.phases), timeout, "every job to say Running"
    )
    print(f"--- {side.name}: every pod running after {all_running - started:.1f} s", flush=True)

    await asyncio.sleep(args.settle)  # the last status writes and their echoes
    idle_mark, idle_cpu = run.audit.mark(), run.usage().cpu
    await asyncio.sleep(args.idle)
    idle_end, idle_cpu_end = run.audit.mark(), run.usage().cpu
    idle = run.requests(idle_mark, idle_end)

    finishing = time.monotonic()
    await run.finish_pods(timeline, names, NAMESPACE)
    marked = time.monotonic()
    pods_done = await timeline.until(
        all_of(timeline, names, lambda t: len(t.pods_finished) >= t.replicas), timeout, "every pod to finish"
    )
    jobs_done = await timeline.until(
        all_of(timeline, names, lambda t: "Succeeded" in t.phases), timeout, "every job to succeed"
    )
    cleaned = await timeline.until(lambda: side.cleaned(timeline.services), timeout, "the cleanup")
    await asyncio.sleep(args.settle)  # events and status writes that follow the last phase change
    after = run.usage()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
        profiler.wait(60)
    done = [r for r in run.requests(mark) if r.audit_id not in {i.audit_id for i in idle}]
    print(f"--- {side.name}: every job Succeeded {jobs_done - finishing:.1f} s after the pods were told to end",
          flush=True)  # fmt: skip

    tracks = [timeline.jobs[name] for name in names]
    work = [r for r in done if r.verb != "watch" and r.resource]
    starting = [r for r in run.requests(mark, running_mark) if r.verb != "watch" and r.resource != "events"]
    result: dict[str, Any] = {
        "side": side.name,
        "jobs": n,
        "replicas": replicas,
        "operator_ready_s": ready_s,
        "submit_s": submitted - started,
        "running_s": all_running - started,
        "jobs_running_status_s": jobs_running - started,
        "jobs_per_s": n / max(all_running - started, 1e-9),
        "start_requests_per_s": len([r for r in starting if r.resource]) / max(all_running - started, 1e-9),
        "mark_pods_s": marked - finishing,
        "pods_finished_s": pods_done - finishing,
        "succeeded_s": jobs_done - finishing,
        "succeeded_after_pods_s": jobs_done - pods_done,
        "cleanup_s": cleaned - jobs_done,
        "first_pod_ms": {
            q: pct([(t.first_pod or 0) - t.created for t in tracks], v) * 1000 for q, v in (("p50", 0.5), ("p99", 0.99))
        },
        "all_running_ms": {
            q: pct([(t.all_running or 0) - t.created for t in tracks], v) * 1000
            for q, v in (("p50", 0.5), ("p99", 0.99))
        },
        "status_changes_per_job": sum(t.status_changes for t in tracks) / n,
        "requests": {f"{verb} {resource}": count for (verb, resource), count in Counter(r.key for r in work).items()},
        "requests_per_job": len(work) / n,
        "standing_requests": sum(1 for r in done if r.verb == "watch" or not r.resource),
        "user_agent": Counter(r.user_agent for r in done).most_common(1)[0][0] if done else "",
        "cpu_s": (after.cpu - before.cpu) - (idle_cpu_end - idle_cpu),
        "start_cpu_share": (running_cpu - before.cpu) / max(all_running - started, 1e-9),
        "peak_rss_mb": after.peak_rss / 2**20,
        "rss_mb": after.rss / 2**20,
        "idle_s": args.idle,
        "idle_requests": len([r for r in idle if r.verb != "watch"]),
        "idle_cpu_s": idle_cpu_end - idle_cpu,
    }
    if side.restarts and args.restart_jobs > 0:
        result["restart"] = await restart(run, timeline, args)
    return result


async def restart(run: Run, timeline: Timeline, args: argparse.Namespace) -> dict[str, Any]:
    """K jobs running, the operator stopped and started; a new job is created the moment it starts."""
    k, replicas, timeout = args.restart_jobs, args.restart_replicas, args.timeout
    acting = args.restart_timeout or timeout
    print(f"--- restart: {k} running jobs of {replicas} pods", flush=True)
    probe = run.timeline(PROBE_NAMESPACE)
    await asyncio.sleep(0.5)
    names = [f"running-{i}" for i in range(k)]
    started = time.monotonic()
    await run.submit(timeline, names, NAMESPACE, replicas)
    await timeline.until(all_of(timeline, names, lambda t: t.all_running is not None), timeout, "every pod to run")
    await timeline.until(all_of(timeline, names, lambda t: "Running" in t.phases), timeout, "every job Running")
    running_s = time.monotonic() - started
    await asyncio.sleep(args.settle)
    idle_mark = run.audit.mark()
    await asyncio.sleep(args.idle)
    idle = [r for r in run.requests(idle_mark) if r.verb != "watch"]
    loaded = run.usage()

    run.stop_operator()
    mark = run.audit.mark()
    restarted = time.monotonic()
    assert run.proc is not None
    run.proc = run.side.start(run.cp, run.kubeconfig, run.log)
    await run.submit(probe, ["probe"], PROBE_NAMESPACE, replicas)
    acted: float | None = None
    try:
        acted = await probe.until(lambda: probe.jobs["probe"].first_pod is not None, acting, "the new job's pod")
        await probe.until(lambda: "Running" in probe.jobs["probe"].phases, acting, "the new job to run")
        await asyncio.sleep(args.settle)
    except TimeoutError as error:  # the figures so far still stand
        print(f"--- restart: {error}", flush=True)
    resynced = run.usage()
    after = run.requests(mark)
    watches = [r for r in after if r.verb == "watch"]
    writes = [r for r in after if r.verb in WRITES and r.namespace != PROBE_NAMESPACE]
    return {
        "jobs": k,
        "replicas": replicas,
        "finished_jobs_beside": args.jobs,
        "start_s": running_s,
        "idle_s": args.idle,
        "idle_requests": len(idle),
        "rss_mb_before": loaded.rss / 2**20,
        "peak_rss_mb_before": loaded.peak_rss / 2**20,
        "acts_after_s": None if acted is None else acted - restarted,
        "gave_up_after_s": None if acted is not None else acting,
        "watching_resources": sorted({r.resource for r in watches}),
        "writes": len(writes),
        "writes_by_kind": dict(Counter(" ".join(r.key) for r in writes)),
        "reads": dict(Counter(" ".join(r.key) for r in after if r.verb in ("get", "list"))),
        "resync_cpu_s": resynced.cpu,
        "rss_mb_after": resynced.rss / 2**20,
    }


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mljob-h2h-"))
    results: dict[str, Any] = {"machine_before": machine(), "sides": {}}
    try:
        for name in args.sides:
            side = SIDES[name]()
            results["sides"][name] = await run_side(side, args, workdir / name)
    except BaseException:
        print(f"(kept {workdir} for its logs)", file=sys.stderr)
        raise
    results["machine_after"] = machine()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per side (default 200)")
    parser.add_argument("--replicas", type=int, default=4, help="pods per job: a master and workers (default 4)")
    parser.add_argument("--restart-jobs", type=int, default=1000, help="running jobs when mljob restarts (0: skip)")
    parser.add_argument("--restart-replicas", type=int, default=None, help="their pods (default: --replicas)")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help=f"which, in order (comma-separated; default {','.join(SIDES)})"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle windows (default 10)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let writes settle before a count")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds any one phase may take")
    parser.add_argument("--restart-timeout", type=float, help="seconds to wait for the restarted mljob to act")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, audit logs)")
    parser.add_argument("--profile", type=Path, help="sample the Python operators (mljob's, raw) with py-spy here")
    parser.add_argument("--smoke", action="store_true", help="3 jobs x 2 pods, 3 for the restart, short windows (CI)")
    args = parser.parse_args(argv)
    if args.profile and not Path(py_spy()).is_file():  # a tool for looking closer, not a dependency of the figures
        parser.error("--profile samples with py-spy, which is not installed: .venv/bin/pip install py-spy")
    if args.smoke:
        args.jobs, args.replicas, args.restart_jobs, args.idle, args.settle, args.timeout = 3, 2, 3, 1.0, 1.0, 120.0
    args.restart_replicas = args.restart_replicas or args.replicas
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in args.sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown side(s) {unknown}; known: {', '.join(SIDES)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control planes and operators on the way out
    results = asyncio.run(main_async(args))
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
