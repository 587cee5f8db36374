"""How fast ``render`` turns an MLJob into its pods and service, how much memory that takes, and how long
``mljob render`` then takes to write them as YAML (libyaml's emitter, and PyYAML's pure-Python one beside it).

    python bench/render.py            # 10, 200 and 2,000 replicas for every installed framework
    python bench/render.py --smoke    # a tiny run that only proves the benchmark works (CI)

Render runs on every reconcile that creates pods and in ``mljob render``/``mljob run``, so a job
of thousands of replicas must render in well under a second. Times are the best of a few runs
(the least disturbed by the rest of the machine); peak memory is measured in a separate run under
tracemalloc, which slows Python down and would distort the times. A benchmark, not a test: it
prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from benchkit import BenchPlugin, shape

from mljob import Framework, MLJob
from mljob.cli.app import dump_yaml
from mljob.core.render import render
from mljob.core.validation import check_job
from mljob.plugins import Plugins, load_plugins

FULL = (10, 200, 2_000)
SMOKE = (2, 5)


def make_job(framework: Framework, replicas: int) -> MLJob:
    container = {
        "name": framework.container_name,
        "image": "registry.example.com/train:1.0",
        "command": ["python", "-m", "train"],
        "resources": {"limits": {"cpu": "4", "memory": "16Gi"}},
        "env": [{"name": "EPOCHS", "value": "10"}],
    }
    template = {"metadata": {"labels": {"app": "train"}}, "spec": {"containers": [container]}}
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "framework": framework.name,
                "replicaSpecs": {
                    role: {"replicas": n, "template": template} for role, n in shape(framework, replicas).items()
                },
            },
        }
    )


@dataclass(frozen=True)
class Row:
    framework: str
    replicas: int
    objects: int
    seconds: float
    peak_bytes: int
    yaml_seconds: float
    pure_yaml_seconds: float

    def cells(self) -> list[str]:
        rate = self.objects / self.seconds if self.seconds > 0 else float("inf")
        return [
            self.framework,
            f"{self.replicas:,}",
            f"{self.objects:,}",
            f"{self.seconds:.4f}",
            f"{rate:,.0f}",
            f"{self.peak_bytes / 2**20:.1f} MiB",
            f"{self.yaml_seconds:.3f}",
            f"{self.pure_yaml_seconds:.3f}",
        ]


def measure(plugins: Plugins, framework: Framework, replicas: int, repeats: int) -> Row:
    job = make_job(framework, replicas)
    checked = check_job(job, plugins)
    if not checked.ok:
        problems = "; ".join(str(p) for p in checked.problems)
        raise SystemExit(f"bench job for {framework.name} x{replicas} is invalid: {problems}")
    best = float("inf")
    objects = 0
    for _ in range(repeats):
        start = time.perf_counter()
        objects = len(render(job, framework, plugins))
        best = min(best, time.perf_counter() - start)
    children = render(job, framework, plugins)
    written = min(_timed(lambda: dump_yaml(children)) for _ in range(max(1, repeats // 2)))
    pure = _timed(lambda: yaml.dump_all(children, Dumper=yaml.SafeDumper, sort_keys=False, width=10_000))
    tracemalloc.start()
    try:
        render(job, framework, plugins)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Row(framework.name, replicas, objects, best, peak, written, pure)


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def print_table(rows: list[Row]) -> None:
    header = [
        "framework",
        "replicas",
        "objects",
        "seconds",
        "objects/s",
        "peak memory",
        "yaml-seconds",
        "pure-python-yaml-seconds",
    ]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: proves the benchmark runs")
    parser.add_argument("--replicas", type=int, nargs="+", help=f"job sizes (default {', '.join(map(str, FULL))})")
    parser.add_argument("--framework", action="append", help="only these frameworks (default: every installed one)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per size; the best time is kept (default 5)")
    args = parser.parse_args(argv)

    plugins = load_plugins()
    if not plugins.frameworks:
        plugins = load_plugins(entry_points=False, extra=[BenchPlugin()])
    names = args.framework or sorted(plugins.frameworks)
    unknown = [name for name in names if plugins.framework(name) is None]
    if unknown:
        print(f"unknown framework(s): {', '.join(unknown)}; installed: {', '.join(sorted(plugins.frameworks))}")
        return 1
    sizes = args.replicas or (SMOKE if args.smoke else FULL)
    repeats = args.repeats or (1 if args.smoke else 5)
    rows = []
    for name in names:
        framework = plugins.frameworks[name]
        for replicas in sizes:
            rows.append(measure(plugins, framework, replicas, repeats))
    print(f"render: best of {repeats} run(s), Python {sys.version.split()[0]}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
