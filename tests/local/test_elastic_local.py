"""examples/pytorch-elastic through ``mljob run``, with a replica killed mid-training (issue 25).

Three torchrun agents train; one that does not host the rendezvous (worker 0's agent hosts the c10d store, and its
``PET_RDZV_CONF`` says ``is_host=1``) is killed with SIGKILL, its worker process with it, as a lost machine would be.
``mljob run`` replaces it (the rulebook never counts an elastic Worker's exit as the job's failure), the agents
re-form the group, every process loads the last checkpoint and goes on, and the run ends with ``RESULT ok`` and 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from controlplane.waiting import until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pytorch-elastic"
MLJOB = Path(sys.executable).parent / "mljob"
MEMBERSHIP = re.compile(
    r"^\[(?P<replica>worker-\d+)\] MEMBERSHIP world=(?P<world>\d+) rank=(?P<rank>\d+) "
    r"restart=(?P<restart>\d+) step=(?P<step>\d+)",
    re.MULTILINE,
)
STEP = re.compile(r"^\[worker-\d+\] step (?P<step>\d+) world (?P<world>\d+) ", re.MULTILINE)

pytestmark = [pytest.mark.frameworks, pytest.mark.slow]


def elastic_job(folder: Path, steps: int) -> Path:
    """The example's job.yaml with this test's checkpoint folder and length, beside a copy of train.py."""
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    container = job["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    overrides = {"CHECKPOINT_DIR": str(folder / "checkpoint"), "STEPS": str(steps)}
    container["env"] = [e for e in container["env"] if e["name"] not in overrides]
    container["env"] += [{"name": k, "value": v} for k, v in overrides.items()]
    (folder / "train.py").write_text((EXAMPLE / "train.py").read_text())
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def environ(pid: int) -> dict[str, str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(e.split("=", 1) for e in raw.decode(errors="replace").split("\0") if "=" in e)
    return {}


def ppid(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def agents(checkpoint: str) -> dict[int, str]:
    """This run's torchrun agents (pid -> PET_RDZV_CONF): the processes of its checkpoint folder running torchrun."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if "torchrun" not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            env = environ(int(entry.name))
            if env.get("CHECKPOINT_DIR") == checkpoint:
                found[int(entry.name)] = env.get("PET_RDZV_CONF", "")
    return found


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return False


def children(pid: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and ppid(int(e.name)) == pid]


def test_a_killed_worker_is_replaced_and_training_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    job = elastic_job(tmp_path, steps=400)
    checkpoint = str(tmp_path / "checkpoint")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [str(MLJOB), "run", str(job)], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731 - read again at each look
        until(lambda: any(int(m["step"]) >= 40 and m["world"] == "3" for m in STEP.finditer(text())), 120,
              "training past step 40 with world=3", interval=0.2)  # fmt: skip
        found = agents(checkpoint)
        assert sorted("is_host=1" in conf for conf in found.values()) == [False, False, True], found
        victim = min(pid for pid, conf in found.items() if "is_host=0" in conf)
        workers = children(victim)  # torchrun's worker: a session of its own (torch's start_new_session)
        before = len(MEMBERSHIP.findall(text()))
        killed = time.monotonic()
        os.killpg(victim, signal.SIGKILL)  # the replica's group: the agent ...
        for pid in workers:  # ... and its train.py, as a lost machine loses both
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # The group re-forms (the replacement joins at once or a moment later) and goes on from the checkpoint.
        resumed = until(
            lambda: list(MEMBERSHIP.finditer(text()))[before:],
            120,
            "a MEMBERSHIP line after the kill",
            interval=0.1,
        )
        took = time.monotonic() - killed
        print(f"kill -> the group re-formed (its first MEMBERSHIP line): {took:.1f} s ({resumed[0].group(0)})")
        code = run.wait(180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    out = text()
    memberships = [m.group(0) for m in MEMBERSHIP.finditer(out)]
    print("\n".join(memberships))
    print("\n".join(line for line in out.splitlines() if line.startswith(("[mljob]", "worker-", "replica"))))
    assert code == 0, out[-6000:]
    assert re.search(r"^\[worker-0\] RESULT ok ", out, re.MULTILINE), out[-6000:]
    groups = list(MEMBERSHIP.finditer(out))
    assert len(groups) > 3, memberships  # the group re-formed
    # Only the first group started from scratch; the re-formed one went on from the checkpoint (torchrun's restart
    # count is no guide: only an agent that saw its worker fail counts one).
    assert sorted(m["replica"] for m in groups if int(m["step"]) == 0) == ["worker-0", "worker-1", "worker-2"], (
        memberships
    )
    assert re.search(r"^\[mljob\] worker-[12] exited with code 137 \(SIGKILL\)$", out, re.MULTILINE), out[-4000:]
    assert re.search(r"^\[mljob\] restarting worker-[12] ", out, re.MULTILINE), out[-4000:]
    assert not [p for p in workers if alive(p)], "the killed worker trains on"
