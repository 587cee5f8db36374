"""What the operator costs: API requests per job, time to finish N jobs, and requests while idle.

    python bench/operator.py                # 100 jobs of 4 pods, then a 60 s idle window
    python bench/operator.py --smoke        # 3 jobs and a 2 s idle window: proves the bench works (CI)
    python bench/operator.py --jobs 500 --replicas 8 --idle 60 --faults 0.05

The real operator runs as a subprocess (``python -m mljob.operator``) against the in-memory API
emulator with its simulated kubelet, as in the end-to-end tests. Watch streams and discovery are
the operator's standing cost and are reported apart; everything else is work it chose to do.
A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mljob.crd import crd
from mljob.testing import Exit, KubeEmulator, Kubelet, RunForever


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


def phase(emu: KubeEmulator, name: str) -> str:
    body = emu.get("mljobs", name) or {}
    return str((body.get("status") or {}).get("phase") or "")


async def bench(jobs: int, replicas: int, idle: float, faults: float) -> None:
    async with KubeEmulator() as emu:
        emu.create("customresourcedefinitions", crd())
        tmp = Path(tempfile.mkdtemp(prefix="mljob-bench-"))
        env = {**os.environ, "KUBECONFIG": str(emu.kubeconfig(tmp / "kubeconfig"))}
        async with Kubelet(emu, default=Exit(0, 0.5)) as kubelet:
            kubelet.script("idle-*", RunForever())
            kubelet.script("bench-*-worker-1", Exit(1, 0.2), Exit(0, 0.5))  # one in-place restart per job
            log = open(tmp / "operator.log", "wb")  # noqa: SIM115 - closed after the subprocess ends
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mljob.operator", "--namespace", "default", "--standalone",
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                await emu.wait_for(lambda: emu.open_watches >= 3, timeout=30)
                if faults:
                    emu.faults.error_rate(("create", "patch", "delete"), faults, codes=(500, 409, 429))
                emu.stats.reset()
                started = time.monotonic()
                names = [f"bench-{i}" for i in range(jobs)]
                for name in names:
                    emu.create("mljobs", job(name, replicas, forever=False))
                await emu.wait_for(lambda: all(phase(emu, n) == "Succeeded" for n in names), timeout=600)
                elapsed = time.monotonic() - started
                work = Counter({k: v for k, v in emu.stats.counts.items() if k[0] not in ("watch", "discovery")})
                total = sum(work.values())
                print(f"{jobs} jobs x {replicas} pods (one in-place restart each), {faults:.0%} of writes failing")
                print(f"  all Succeeded in {elapsed:.1f} s ({jobs / elapsed:.1f} jobs/s)")
                print(f"  API requests: {total} ({total / jobs:.1f} per job), injected faults {emu.stats.injected}")
                for (verb, resource), n in sorted(work.items(), key=lambda kv: -kv[1]):
                    print(f"    {verb:8} {resource:40} {n:7} ({n / jobs:.1f} per job)")

                emu.faults.clear()
                emu.create("mljobs", job("idle-job", replicas, forever=True))
                await emu.wait_for(lambda: phase(emu, "idle-job") == "Running", timeout=60)
                await asyncio.sleep(2.0)
                moment = time.monotonic()
                await asyncio.sleep(idle)
                during = [r for r in emu.stats.since(moment) if r.verb not in ("watch", "discovery")]
                standing = [r for r in emu.stats.since(moment) if r.verb in ("watch", "discovery")]
                print(f"idle running job ({replicas} pods) for {idle:.0f} s: {len(during)} API requests")
                print(f"  (watch reconnects and discovery in that window: {len(standing)})")
            finally:
                proc.terminate()
                await proc.wait()
                log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to watch an idle running job")
    parser.add_argument("--faults", type=float, default=0.0, help="fraction of writes that fail (500/409/429)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI")
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.replicas, args.idle = 3, 3, 2.0
    asyncio.run(bench(args.jobs, args.replicas, args.idle, args.faults))


if __name__ == "__main__":
    main()
