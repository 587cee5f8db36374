"""A real local run for the contract kit: every replica a process, wired as ``mljob run`` wires it.

:func:`run_locally` starts one small Python program per replica through the local runtime's own
planning and supervisor. Each program writes down the framework's variables it received and, once
every replica started has done so, exits 0 (or, for a role that runs until stopped, waits to be stopped).
The framework's success rule must then end the run, and what each process received must be what
``env()`` gives for the loopback cluster the run used.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mljob.api import MLJob
from mljob.framework import Framework, Replica, replicas_of
from mljob.plugin_testing.jobs import FakeCluster, wire

DEADLINE_SECONDS = 120
"""The run's ``activeDeadlineSeconds``: a framework whose success rule never fires still ends the run."""

PROGRAM = textwrap.dedent(
    """
    import json, os, sys, time
    folder, total, stay, names = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stay", sys.argv[4:]
    wired = {name: os.environ[name] for name in names if name in os.environ}
    path = os.path.join(folder, f"{os.getpid()}.json")
    with open(path + ".part", "w") as out:
        json.dump(wired, out, sort_keys=True)
    os.replace(path + ".part", path)
    while len([n for n in os.listdir(folder) if n.endswith(".json")]) < total:
        time.sleep(0.05)
    while stay:
        time.sleep(1)
    """
)


@dataclass(frozen=True)
class LocalRun:
    """What a local run did: its outcome, the variables each process received, what mljob planned."""

    succeeded: bool
    message: str
    exit_status: int
    received: list[dict[str, str]]
    """The framework's variables as each process saw them (one per process, in no particular order)."""
    planned: dict[Replica, dict[str, str]]
    """The same variables as mljob planned them for each replica."""
    wiring: dict[Replica, dict[str, str]]
    """``framework.env(job, replica, cluster)`` for the loopback cluster the run used, with the framework's
    :meth:`~Framework.local_wiring` on top, for every replica the run started."""
    files: dict[str, str]
    """The files written into the run's folder, by name."""
    output: str

    def received_as_planned(self) -> bool:
        """Every process received what mljob planned for one replica (a multiset: two replicas may match)."""
        key = lambda env: json.dumps(env, sort_keys=True)  # noqa: E731
        return Counter(map(key, self.received)) == Counter(map(key, self.planned.values()))


def started(framework: Framework, job: MLJob, folder: Path) -> list[Replica]:
    """The replicas a local run starts: those the framework's :meth:`~Framework.local_wiring` does not leave out."""
    return [r for r in replicas_of(job) if framework.local_wiring(job, r, folder).run]


def local_job(framework: Framework, job: MLJob, folder: Path, names: Sequence[str], total: int | None = None) -> MLJob:
    """``job`` with every wiring container running :data:`PROGRAM`, and a deadline.

    ``total`` is how many processes the run starts (default: one per replica).
    """
    doc = wire(job)
    if total is None:
        total = sum(spec["replicas"] for spec in doc["spec"]["replicaSpecs"].values())
    for role, spec in doc["spec"]["replicaSpecs"].items():
        known = framework.role(role)
        stay = "stay" if known is not None and known.runs_until_stopped else "exit"
        containers = spec["template"]["spec"]["containers"]
        index = next((i for i, c in enumerate(containers) if c.get("name") == framework.container_name), 0)
        containers[index] = {
            **containers[index],
            "command": [sys.executable, "-c", PROGRAM, str(folder), str(total), stay, *names],
        }
        spec["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    doc["spec"]["runPolicy"] = {**doc["spec"].get("runPolicy", {}), "activeDeadlineSeconds": DEADLINE_SECONDS}
    return MLJob.model_validate(doc)


def run_locally(framework: Framework, job: MLJob) -> LocalRun:
    """Run ``job`` on this machine with the local runtime, one :data:`PROGRAM` per replica.

    The variables recorded are every name ``env()`` returns for any replica, plus the framework's
    ``reserved_env``; they are taken out of this process's environment first, so a process sees only
    what mljob gave it.
    """
    from mljob.local.display import Display
    from mljob.local.runner import prepare
    from mljob.local.supervisor import Supervisor

    with tempfile.TemporaryDirectory(prefix="mljob-contract-") as tmp:
        folder = Path(tmp) / "received"
        folder.mkdir()
        run_folder = Path(tmp) / "run"
        run_folder.mkdir()
        names = sorted(set(framework.reserved_env) | _wired_names(framework, job))
        runnable = local_job(framework, job, folder, names, len(started(framework, job, run_folder)))
        environ = {k: v for k, v in os.environ.items() if k not in names}
        prepared, cluster = prepare(runnable, framework, Path(tmp), environ, run_folder)
        out = io.StringIO()
        with Display(out, live=False) as display:
            result = asyncio.run(Supervisor(runnable, framework, prepared.launches, display).run())
        received = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        return LocalRun(
            succeeded=result.finish.succeeded,
            message=result.finish.message,
            exit_status=result.exit_status,
            received=received,
            planned={
                r: {n: launch.env[n] for n in names if n in launch.env} for r, launch in prepared.launches.items()
            },
            wiring={
                r: {**framework.env(runnable, r, cluster), **framework.local_wiring(runnable, r, run_folder).env}
                for r in started(framework, runnable, run_folder)
            },
            files={p.name: p.read_text() for p in run_folder.iterdir()},
            output=out.getvalue(),
        )


def _wired_names(framework: Framework, job: MLJob) -> set[str]:
    cluster = FakeCluster(job, style="ip")
    return {name for replica in replicas_of(job) for name in framework.env(job, replica, cluster)}
