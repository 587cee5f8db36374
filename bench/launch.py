"""The local runtime's own overhead: from ``mljob run`` starting to its last replica running.

    python bench/launch.py            # 1 and 32 replicas, best and median of 5 runs
    python bench/launch.py --smoke    # a tiny run that only proves the benchmark works (CI)

A person waits this long before their training script even starts, and a job of many replicas
waits for its last one, so it must stay small. Measured in phases, with the same functions
``mljob run`` calls: reading and checking the file (plugins loaded once beforehand, as the CLI
does at start-up), planning (free ports, the plugin's wiring, argv/env per replica), and
spawning until the last replica's program runs (its exec done). Every replica runs ``date``,
so what the scripts do is excluded; the run to the job's end is not timed. The last column is
the cold figure a person sees: the ``mljob`` command started as a new process (Python start-up,
imports, plugin discovery included) until the latest wall-clock time a replica's ``date``
printed. A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from benchkit import BenchPlugin, shape

from mljob import Framework
from mljob.local.display import Display
from mljob.local.jobfiles import job_and_framework, load_jobs
from mljob.local.runner import prepare
from mljob.local.supervisor import Supervisor
from mljob.plugins import Plugins, load_plugins

STAMP = re.compile(r"^\[[a-z]+-\d+\] (\d+\.\d+)$")
"""A replica's line: its ``date +%s.%N``."""
FULL = (1, 32)
SMOKE = (1, 4)
DEFAULT_FRAMEWORK = "pytorch"


def write_job(folder: Path, framework: Framework, replicas: int) -> Path:
    container = {
        "name": framework.container_name,
        "image": "registry.example.com/train:1.0",
        "command": [shutil.which("date") or "date", "+%s.%N"],
        "env": [{"name": "EPOCHS", "value": "10"}, {"name": "DATA", "value": "/data/$(EPOCHS)"}],
    }
    template = {"spec": {"containers": [container]}}
    doc = {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "bench"},
        "spec": {
            "framework": framework.name,
            "replicaSpecs": {
                role: {"replicas": n, "restartPolicy": "Never", "template": template}
                for role, n in shape(framework, replicas).items()
            },
        },
    }
    path = folder / f"{framework.name}-{replicas}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True)
class Sample:
    """One run's phases, in seconds."""

    check: float
    plan: float
    spawn: float
    replicas: int

    @property
    def total(self) -> float:
        return self.check + self.plan + self.spawn


def measure_once(path: Path, plugins: Plugins) -> Sample:
    start = time.monotonic()
    checked = load_jobs(str(path), plugins)
    job, framework = job_and_framework(checked[0])
    checked_at = time.monotonic()
    prepared, _ = prepare(job, framework, path.parent)
    planned_at = time.monotonic()
    supervisor = Supervisor(job, framework, prepared.launches, Display(io.StringIO(), live=False))
    result = asyncio.run(supervisor.run())
    if not result.finish.succeeded:
        raise SystemExit(f"{path.name}: the bench job failed: {result.finish.message}")
    last = supervisor.started + max(result.launched.values())  # on the same monotonic clock
    return Sample(checked_at - start, planned_at - checked_at, last - planned_at, len(result.launched))


def measure_cold(path: Path) -> float:
    """Seconds from starting ``mljob run`` as a process to the last replica's ``date``."""
    mljob = Path(sys.executable).parent / "mljob"
    start = time.time()
    done = subprocess.run([str(mljob), "run", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path.name}: mljob run failed:\n{done.stdout}{done.stderr}")
    stamps = [float(m[1]) for m in map(STAMP.match, done.stdout.splitlines()) if m]
    return max(stamps) - start


def row(framework: str, samples: list[Sample], cold: list[float]) -> list[str]:
    best = min(samples, key=lambda s: s.total)
    median = statistics.median(s.total for s in samples)
    return [
        framework,
        str(best.replicas),
        f"{best.check * 1000:.1f}",
        f"{best.plan * 1000:.1f}",
        f"{best.spawn * 1000:.1f}",
        f"{best.total * 1000:.1f}",
        f"{median * 1000:.1f}",
        f"{best.spawn / best.replicas * 1000:.2f}",
        f"{statistics.median(cold) * 1000:.0f}",
    ]


def print_table(rows: list[list[str]]) -> None:
    header = [
        "framework",
        "replicas",
        "check ms",
        "plan ms",
        "spawn ms",
        "total ms",
        "median ms",
        "spawn/replica ms",
        "cold CLI ms",
    ]
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        cells = zip(line, widths, strict=True)
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: proves the benchmark runs")
    parser.add_argument("--replicas", type=int, nargs="+", help=f"job sizes (default {', '.join(map(str, FULL))})")
    parser.add_argument(
        "--framework", action="append", help=f"frameworks to wire the replicas (default {DEFAULT_FRAMEWORK})"
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per size (default 5)")
    args = parser.parse_args(argv)

    plugins = load_plugins()
    default = DEFAULT_FRAMEWORK if DEFAULT_FRAMEWORK in plugins.frameworks else None
    if default is None:
        plugins = load_plugins(entry_points=False, extra=[BenchPlugin()])
        default = "bench"
    names = args.framework or [default]
    unknown = [name for name in names if plugins.framework(name) is None]
    if unknown:
        print(f"unknown framework(s): {', '.join(unknown)}; installed: {', '.join(sorted(plugins.frameworks))}")
        return 1
    sizes = args.replicas or (SMOKE if args.smoke else FULL)
    repeats = args.repeats or (1 if args.smoke else 5)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            for replicas in sizes:
                path = write_job(Path(folder), plugins.frameworks[name], replicas)
                measure_once(path, plugins)  # warm-up: imports, first fork of a large process
                samples = [measure_once(path, plugins) for _ in range(repeats)]
                rows.append(row(name, samples, [measure_cold(path) for _ in range(repeats)]))
    print(
        f"mljob run, from start to its last replica running: best of {repeats} run(s), Python {sys.version.split()[0]}"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
