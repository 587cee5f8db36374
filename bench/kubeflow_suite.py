"""Kubeflow training-operator's own end-to-end suite, unmodified, against an operator on the local control plane.

    python bench/kubeflow_suite.py                                  # training-operator v1.8.1, suites 1.9.4 and 1.8.1
    python bench/kubeflow_suite.py --operator mljob                 # mljob serving the kubeflow.org/v1 kinds
    python bench/kubeflow_suite.py --versions 1.9.4 --modes gang    # one suite, one mode
    python bench/kubeflow_suite.py --no-mpi                         # without the MPIJob tests

One control plane (controlplane/, `make controlplane`) with scheduler-plugins' scheduler for the gang run, the
operator started twice, for the plain namespace and for the gang one (``--gang-scheduler-name=scheduler-plugins``
for training-operator), then each suite version (`make setup-kubeflow-e2e` installs them) plain and gang, one after
another, each in its namespace emptied first (tests/kubeflow/suite.py). Prints every test's outcome, why a test
failed (the first exception it raised), and how long each suite took. A report, not a test: it asserts nothing,
and exits 0 whatever the suites say (non-zero only when a suite could not run at all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the control plane and the harness are packages of the repository

from controlplane import ControlPlane  # noqa: E402
from controlplane.cluster import Node  # noqa: E402
from tests.kubeflow import suite  # noqa: E402
from tests.kubeflow.operators import OPERATORS  # noqa: E402

NODES = tuple(Node(f"kubeflow-e2e-node-{i}") for i in range(3))
"""Room for every job of a suite at once (each pod asks for at most 1.2 CPU and 3 GiB)."""


def table(runs: list[suite.SuiteRun], operator: str) -> str:
    lines = []
    for run in runs:
        counts = run.counts()
        summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "skipped") if counts[k])
        lines += ["", f"kubeflow-training {run.version} suite, {run.mode} ({run.namespace}), against {operator}: "
                  f"{summary} in {run.seconds:.0f} s"]  # fmt: skip
        width = max((len(o.test) for o in run.ran()), default=10)
        for o in run.ran():
            why = o.reason if o.outcome != "passed" else ""
            if o.outcome == "failed" and o.message and o.message not in why:
                why += f"  [ended with: {o.message}]"
            lines.append(f"  {o.test:<{width}}  {o.outcome:<7} {o.seconds:5.0f} s  {why}".rstrip())
    total = sum(r.seconds for r in runs)
    lines += ["", f"suites: {total:.0f} s in all; machine load average {os.getloadavg()[0]:.2f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operator", choices=sorted(OPERATORS), default="training-operator")
    parser.add_argument("--versions", default=",".join(suite.VERSIONS), help="suite versions, in order")
    parser.add_argument("--modes", default="plain,gang", help="plain, gang or both (default both)")
    parser.add_argument("--timeout", type=float, default=suite.TIMEOUT, help="seconds one test may take")
    parser.add_argument("--workers", type=int, help="test files side by side (default: all of them; 1: in turn)")
    parser.add_argument("--no-mpi", dest="mpi", action="store_false", help="leave out the MPIJob tests")
    parser.add_argument("--json", type=Path, help="also write every outcome to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, reports, audit log)")
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"plain", "gang"} or not modes:
        parser.error(f"--modes {args.modes!r}: plain, gang or both")
    for version in versions:
        suite.suite_dir(version)  # fails now, naming `make setup-kubeflow-e2e`, rather than after a start-up
    gangs = [m == "gang" for m in modes]
    starter = OPERATORS[args.operator]
    workdir = Path(tempfile.mkdtemp(prefix="mljob-kubeflow-e2e-"))
    runs: list[suite.SuiteRun] = []
    try:
        with ControlPlane(workdir / "controlplane", nodes=NODES, log=print) as cp:
            cp.start()
            if True in gangs:
                cp.start_coscheduler()
            with contextlib.ExitStack() as operators:
                for gang in gangs:
                    started = time.monotonic()
                    namespace = suite.NAMESPACES[gang]
                    suite.create_namespace(cp, namespace)
                    log = operators.enter_context(starter(cp, namespace=namespace, gang=gang, workdir=workdir))
                    print(f"--- {args.operator} for {namespace} ready in {time.monotonic() - started:.1f} s ({log})")
                for version in versions:
                    for gang in gangs:
                        mode = "gang" if gang else "plain"
                        print(f"--- kubeflow-training {version} suite, {mode}", flush=True)
                        run = suite.run(
                            cp, version, gang=gang, workdir=workdir / f"{version}-{mode}", timeout=args.timeout,
                            workers=args.workers, mpi=args.mpi,
                        )  # fmt: skip
                        counts = run.counts()
                        print(f"--- {version} {mode}: {dict(counts)} in {run.seconds:.0f} s", flush=True)
                        runs.append(run)
    except BaseException:
        print(f"(kept {workdir} for its logs)", file=sys.stderr)
        raise
    print(table(runs, f"{args.operator}" + (" v1.8.1" if args.operator == "training-operator" else "")))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([as_json(r) for r in runs], indent=2) + "\n")
    if args.keep:
        print(f"(work folder: {workdir})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def as_json(run: suite.SuiteRun) -> dict[str, Any]:
    return {
        "version": run.version,
        "mode": run.mode,
        "namespace": run.namespace,
        "seconds": round(run.seconds, 1),
        "counts": dict(run.counts()),
        "tests": {
            o.test: {"outcome": o.outcome, "reason": o.reason, "message": o.message, "seconds": o.seconds}
            for o in run.ran()
        },
    }


if __name__ == "__main__":
    main()
