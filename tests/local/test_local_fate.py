"""The rulebook's hard cases through ``mljob run``, with real framework plugins and real processes.

Two things that happen "in the same instant" must be one observation for the rule of precedence to decide
(mljob.core.rules): here ``mljob run`` is stopped (SIGSTOP) while they happen and continued once both have,
so its next decision sees both, as a reconcile pass does after a burst of pod events. The same cases run
through the operator in tests/operator/test_e2e_fate.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
MLJOB = Path(sys.executable).with_name("mljob")
DEADLINE = 60.0
"""Generous: how long a condition may take on a loaded machine."""


def role(replicas: int, policy: str, *args: str) -> dict[str, Any]:
    container = {"name": "c", "image": "python:3.11-slim", "command": ["python", "fate.py", *args]}
    return {"replicas": replicas, "restartPolicy": policy, "template": {"spec": {"containers": [container]}}}


def write(folder: Path, framework: str, specs: dict[str, Any], run_policy: dict[str, Any]) -> Path:
    shutil.copy(HERE / "fate.py", folder / "fate.py")
    for spec in specs.values():  # the wiring container is the framework's: name it so
        spec["template"]["spec"]["containers"][0]["name"] = framework
    doc = {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": "fate"},
        "spec": {"framework": framework, "replicaSpecs": specs, "runPolicy": run_policy},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(path: Path, folder: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "STATE": str(folder), "NO_COLOR": "1"}
    return subprocess.Popen(
        [str(MLJOB), "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(what: str, predicate: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def ready(folder: Path) -> int:
    return len(list(folder.glob("*.ready")))


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGSTOP, and wait until every thread has stopped (one blocked in waitpid would still reap a child)."""
    proc.send_signal(signal.SIGSTOP)

    def stopped() -> bool:
        states = [t.read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{proc.pid}/task").glob("*/stat")]
        return bool(states) and all(state in ("T", "t") for state in states)

    wait_for("mljob run to stop", stopped)


def exited_children(pid: int) -> int:
    """Children of ``pid`` that have exited and wait to be reaped (zombies): seen by nobody yet."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            count += 1
    return count


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out


def test_a_chief_that_succeeds_as_workers_fail_wins(tmp_path: Path) -> None:
    """TensorFlow: the chief exits 0 in the same instant as both workers exit 1 under Never: success wins."""
    specs = {"Chief": role(1, "Never", "chief", "go", "0"), "Worker": role(2, "Never", "worker", "go", "1")}
    proc = start(write(tmp_path, "tensorflow", specs, {}), tmp_path)
    wait_for("3 replicas running", lambda: ready(tmp_path) == 3)
    stop(proc)
    try:
        (tmp_path / "go").touch()
        wait_for("3 exits, not yet seen", lambda: exited_children(proc.pid) == 3)
    finally:
        proc.send_signal(signal.SIGCONT)
    code, out = finish(proc)
    assert code == 0, out
    assert "[mljob] job succeeded in " in out.splitlines()[-1], out


def test_a_failure_at_the_deadline_is_the_reason(tmp_path: Path) -> None:
    """PyTorch: a worker fails (Never) as activeDeadlineSeconds passes: the failure, a cause, is the reason."""
    specs = {"Master": role(1, "OnFailure", "master", "forever"), "Worker": role(1, "Never", "worker", "go", "1")}
    proc = start(write(tmp_path, "pytorch", specs, {"activeDeadlineSeconds": 2}), tmp_path)
    wait_for("2 replicas running", lambda: ready(tmp_path) == 2)
    running = time.monotonic()  # later than the run's start, which the deadline counts from
    stop(proc)
    try:
        (tmp_path / "go").touch()
        wait_for("the worker's exit, not yet seen", lambda: exited_children(proc.pid) == 1)
        wait_for("the deadline to pass", lambda: time.monotonic() > running + 2.5)
    finally:
        proc.send_signal(signal.SIGCONT)
    code, out = finish(proc)
    assert code == 1, out
    assert out.splitlines()[-1] == "[mljob] job failed: worker-0 exited with code 1", out


def test_backoff_is_exhausted_by_the_exit_after_the_last_allowed_restart(tmp_path: Path) -> None:
    """PyTorch: backoffLimit 1 allows one restart; the exit after it fails the job, naming the replica."""
    specs = {"Worker": role(1, "OnFailure", "worker", "exit", "1")}
    code, out = finish(start(write(tmp_path, "pytorch", specs, {"backoffLimit": 1}), tmp_path))
    assert code == 1, out
    assert out.splitlines()[-1] == "[mljob] job failed: worker-0 exited with code 1; backoffLimit 1 reached", out
    assert "restarting worker-0 (restartPolicy OnFailure; restart 1 of backoffLimit 1)" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("worker-0 "))
    assert row[1:4] == ["failed", "1", "1"], out  # result, exit code, restarts
