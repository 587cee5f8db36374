"""What the operator costs: throughput to Running, API requests per job, latency, and idle cost.

    python bench/operator.py                 # 100 jobs of 4 pods, then a 60 s idle window
    python bench/operator.py --smoke         # 3 jobs and a 2 s idle window: proves the bench works (CI)
    python bench/operator.py --jobs 200 --replicas 8 --faults 0.05 --cut-watches 2

The real operator runs as a subprocess (the ``mljob operator`` command) against the in-memory
API emulator with its simulated kubelet, as in the end-to-end tests. Every job's pods run for
``--run`` seconds and one worker per job restarts in place once, so each job goes through
create -> Running -> Restarting -> Running -> Succeeded. Times come from the emulator's own
change feed (when each write was committed), reconcile pass durations from the operator's
Prometheus metrics. Watch streams and discovery are the operator's standing cost and are
reported apart; everything else is work it chose to do. A benchmark, not a test: it prints
numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from mljob.crd import crd
from mljob.testing import Change, Exit, KubeEmulator, Kubelet, RunForever

COMMAND = [sys.executable, "-c", "from mljob.cli import main; main()", "operator"]


def job(name: str, replicas: int, forever: bool) -> dict[str, object]:
    container = {"name": "pytorch", "image": "busybox:1.36"}
    template = {"spec": {"containers": [container]}}
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name},
        "spec": {
            "framework": "pytorch",
            "replicaSpecs": {
                "Master": {"replicas": 1, "template": template},
                "Worker": {"replicas": replicas - 1, "template": template, "restartPolicy": "OnFailure"},
            },
            "runPolicy": {"activeDeadlineSeconds": 3600} if forever else {},
        },
    }


class Timeline:
    """When each job was created and first reached each phase, from the emulator's change feed."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.phases: dict[str, dict[str, float]] = {}

    def listen(self, change: Change) -> None:
        if change.resource.key[1] != "mljobs" or change.type == "DELETED":
            return
        name, now = change.name, time.monotonic()
        self.created.setdefault(name, now)
        phase = str((change.obj.get("status") or {}).get("phase") or "")
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


async def bench(args: argparse.Namespace) -> None:
    jobs, replicas = args.jobs, args.replicas
    async with KubeEmulator() as emu:
        emu.create("customresourcedefinitions", crd())
        timeline = Timeline()
        emu.store.subscribe(timeline.listen)
        tmp = Path(tempfile.mkdtemp(prefix="mljob-bench-"))
        env = {**os.environ, "KUBECONFIG": str(emu.kubeconfig(tmp / "kubeconfig"))}
        port = free_port()
        async with Kubelet(emu, default=Exit(0, args.run)) as kubelet:
            kubelet.script("idle-*", RunForever())
            kubelet.script("bench-*-worker-0", Exit(1, args.run / 2), Exit(0, args.run / 2))  # one restart per job
            log = open(tmp / "operator.log", "wb")  # noqa: SIM115 - closed after the subprocess ends
            proc = await asyncio.create_subprocess_exec(
                *COMMAND, "--namespace", "default", "--standalone", "--metrics-port", str(port),
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                await emu.wait_for(lambda: emu.open_watches >= 3, timeout=60)
                if args.faults:
                    emu.faults.error_rate(("create", "patch", "delete"), args.faults, codes=(500, 409, 429))
                if args.cut_watches:
                    emu.cut_watches_every(args.cut_watches)
                emu.stats.reset()
                started = time.monotonic()
                names = [f"bench-{i}" for i in range(jobs)]
                for name in names:
                    emu.create("mljobs", job(name, replicas, forever=False))
                ended = ("Succeeded", "Failed")
                await emu.wait_for(lambda: all(any(timeline.first(n, p) for p in ended) for n in names), timeout=900)
                finished = time.monotonic()
                # The terminal status is written before cleanPodPolicy's deletes: count those too.
                await emu.wait_for(lambda: not emu.list("services"), timeout=60)
                emu.cut_watches_every(None)
                emu.faults.clear()
                work = Counter({k: v for k, v in emu.stats.counts.items() if k[0] not in ("watch", "discovery")})
                standing = sum(v for k, v in emu.stats.counts.items() if k[0] in ("watch", "discovery"))
                injected = emu.stats.injected
                passes = await asyncio.to_thread(scrape, port)

                emu.create("mljobs", job("idle-job", replicas, forever=True))
                await emu.wait_for(lambda: timeline.first("idle-job", "Running"), timeout=60)
                await asyncio.sleep(2.0)  # the last status write and its echo settle
                moment = time.monotonic()
                await asyncio.sleep(args.idle)
                idle_all = emu.stats.since(moment)
            finally:
                proc.terminate()
                await proc.wait()
                log.close()

    to_running = [t - timeline.created[n] for n in names if (t := timeline.first(n, "Running")) is not None]
    last_running = max((timeline.first(n, "Running") or started) for n in names)
    to_done = [(timeline.first(n, "Succeeded") or finished) - timeline.created[n] for n in names]
    total = sum(work.values())
    mean_pass = passes["sum"] / passes["count"] * 1000 if passes["count"] else float("nan")
    print(
        f"operator benchmark: {jobs} jobs x {replicas} pods (pods run {args.run:g} s, one in-place restart per job), "
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
        (f"idle running job: requests in {args.idle:g} s", f"{len(idle_all)} (watch and discovery included)"),
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
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
