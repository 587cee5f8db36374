"""Every example trains for real through ``mljob run``, as a person would run it.

Each training script checks its own result and prints ``RESULT ok loss A->B allreduce=S ...``
on every rank that checks; the tests assert the exit status, that line on the ranks that must
print it (so a script that exited 0 without training fails here), that the loss fell and that
the ranks agree on the all-reduced value (and on the trained model's hash, where a script prints
``model=``), the summary table, and the ``--logs-dir`` files.

The MXNet example runs under ``.venv-mxnet/bin/mljob`` (MXNet 1.9.1 needs numpy<1.24): its
``python train.py`` then means that environment's python, because ``mljob run`` puts the folder
of the interpreter running it first on the replicas' PATH.
"""

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mljob.local.procs import session_members

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MLJOB = Path(sys.executable).parent / "mljob"
MXNET_MLJOB = ROOT / ".venv-mxnet" / "bin" / "mljob"
RESULT = re.compile(
    r"^\[(?P<replica>[a-z]+-\d+)\] RESULT (?P<status>\w+) loss (?P<first>[\d.]+)->(?P<last>[\d.]+) "
    r"allreduce=(?P<allreduce>[\d.]+)"
)

pytestmark = pytest.mark.frameworks


@dataclass(frozen=True)
class Example:
    folder: str
    checkers: tuple[str, ...]
    """Replicas that print a RESULT line."""
    allreduce: float
    """The value every checker must report."""
    summary: dict[str, str]
    """Replica -> the result the summary table must show."""
    mljob: Path = MLJOB
    same_model: bool = False
    """Every checker prints ``model=<hash of its trained model>``, and the hashes must be equal."""


CASES = [
    Example(
        "pytorch-ddp",
        ("master-0", "worker-0", "worker-1"),
        6.0,  # 1 + 2 + 3 over three ranks
        {"master-0": "succeeded", "worker-0": "succeeded", "worker-1": "succeeded"},
    ),
    Example(
        "pytorch-torchrun",  # torchrun's child prints through the replica's stdout
        ("worker-0", "worker-1"),
        3.0,
        {"worker-0": "succeeded", "worker-1": "succeeded"},
    ),
    Example(
        "tensorflow-multiworker",
        ("worker-0", "worker-1"),
        3.0,
        {"worker-0": "succeeded", "worker-1": "succeeded"},
    ),
    Example(
        "tensorflow-ps",  # allreduce: the PS-side step counter, one per scheduled step
        ("chief-0",),
        60.0,
        {"chief-0": "succeeded", "worker-0": "stopped", "worker-1": "stopped", "ps-0": "stopped"},
    ),
    Example(
        "mxnet-dist-sync",  # the scheduler and server exit on their own when the workers finish
        ("worker-0", "worker-1"),
        3.0,
        {"worker-0": "succeeded", "worker-1": "succeeded"},
        MXNET_MLJOB,
    ),
    Example(
        "jax-distributed",  # process 0 (worker 0) hosts jax.distributed's coordination service
        ("worker-0", "worker-1", "worker-2"),
        6.0,
        {"worker-0": "succeeded", "worker-1": "succeeded", "worker-2": "succeeded"},
    ),
    Example(
        "xgboost-distributed",  # the master runs XGBoost's tracker and trains as rank 0
        ("master-0", "worker-0", "worker-1"),
        6.0,
        {"master-0": "succeeded", "worker-0": "succeeded", "worker-1": "succeeded"},
        same_model=True,
    ),
    Example(
        "paddle-distributed",  # paddle's launcher on each node prints its trainer's output through the replica
        ("worker-0", "worker-1", "worker-2"),
        6.0,
        {"worker-0": "succeeded", "worker-1": "succeeded", "worker-2": "succeeded"},
        same_model=True,
    ),
    Example(
        "mpi-allreduce",  # locally mpirun starts the three ranks here (no workers); in a cluster, over ssh on them
        ("launcher-0",),
        6.0,
        {"launcher-0": "succeeded"},
    ),
    Example(
        "mpi-pytorch-ddp",  # DDP's ranks started by mpirun (rank and world from OpenMPI's env); the launcher waits
        ("launcher-0",),  # for its workers to be Ready in a cluster (WaitForWorkersReady)
        6.0,
        {"launcher-0": "succeeded"},
    ),
    Example(
        "mpi-deepspeed",  # DeepSpeed over gloo, rank, world and rank 0's address discovered over MPI (mpi4py)
        ("launcher-0",),
        6.0,
        {"launcher-0": "succeeded"},
    ),
]
MODEL = re.compile(r" model=(?P<digest>[0-9a-f]+)")


def run_mljob(command: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Exit status and output (stderr after stdout); a run that hangs is stopped as Ctrl-C would,
    so its replicas do not outlive the test."""
    mljob = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        out, err = mljob.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        mljob.send_signal(signal.SIGINT)
        out, err = mljob.communicate(timeout=60)
        pytest.fail(f"mljob run did not finish in {timeout:.0f}s:\n{out}{err}")
    return mljob.returncode, out + err


def summary(out: str) -> dict[str, list[str]]:
    """The final table's rows by replica: [result, exit code, restarts, duration]."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["replica", "result"])
    rows: dict[str, list[str]] = {}
    for line in lines[header + 1 :]:
        if line.startswith("[mljob]"):
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


@pytest.mark.parametrize("example", CASES, ids=[c.folder for c in CASES])
def test_example_trains_and_checks_itself(example: Example, tmp_path: Path) -> None:
    assert example.mljob.exists(), f"{example.mljob} is missing: run `make setup setup-mxnet`"
    logs = tmp_path / "logs"
    command = [str(example.mljob), "run", str(EXAMPLES / example.folder / "job.yaml"), "--logs-dir", str(logs)]
    code, out = run_mljob(command, cwd=tmp_path)  # the job's folder, not the caller's, is where replicas run
    assert code == 0, out
    assert out.rstrip().splitlines()[-1].startswith("[mljob] job succeeded in ")

    results = {m["replica"]: m for m in map(RESULT.match, out.splitlines()) if m}
    assert sorted(results) == sorted(example.checkers), out
    for replica, match in results.items():
        assert match["status"] == "ok", f"{replica}: {match.group(0)}"
        assert float(match["last"]) < float(match["first"]), f"{replica}: the loss did not fall"
        assert float(match["allreduce"]) == example.allreduce, f"{replica}: {match.group(0)}"
    if example.same_model:
        models = [MODEL.search(match.string) for match in results.values()]
        assert all(models), f"a checker printed no model hash: {out}"
        assert len({m["digest"] for m in models if m}) == 1, f"the ranks ended with different models:\n{out}"

    rows = summary(out)
    for replica, result in example.summary.items():
        assert rows[replica][0] == result, f"{replica}: {rows[replica]}"
        assert rows[replica][2] == "0", f"{replica} was restarted: {rows[replica]}"
    assert sorted(p.stem for p in logs.iterdir()) == sorted(rows)
    for replica in example.checkers:
        assert "RESULT ok" in (logs / f"{replica}.log").read_text()


def test_ctrl_c_stops_a_real_training_run_and_leaves_no_process(tmp_path: Path) -> None:
    """The DDP example, made to train for long, interrupted mid-training like a person would."""
    job = yaml.safe_load((EXAMPLES / "pytorch-ddp" / "job.yaml").read_text())
    for spec in job["spec"]["replicaSpecs"].values():
        container = spec["template"]["spec"]["containers"][0]
        container["workingDir"] = str(EXAMPLES / "pytorch-ddp")
        container["env"] = [e for e in container["env"] if e["name"] != "STEPS"] + [
            {"name": "STEPS", "value": "1000000"}
        ]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    mljob = subprocess.Popen(
        [str(MLJOB), "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    assert mljob.stdout is not None
    seen: list[str] = []
    for line in mljob.stdout:  # until every rank is past its first steps
        seen.append(line)
        if sum(" step 20 loss " in s for s in seen) == 3:
            break
    sessions = {session_of(pid) for pid in children_of(mljob.pid)}
    assert len(sessions) == 4, seen  # three replicas and the keeper (mljob.local.keeper), each its own
    mljob.send_signal(signal.SIGINT)
    rest, _ = mljob.communicate(timeout=60)
    out = "".join(seen) + rest
    assert mljob.returncode == 130, out
    assert "[mljob] job failed: interrupted by SIGINT; stopped every replica" in out
    assert [summary(out)[r][0] for r in ("master-0", "worker-0", "worker-1")] == ["stopped"] * 3
    assert [pid for sid in sessions for pid in session_members(sid)] == []


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
