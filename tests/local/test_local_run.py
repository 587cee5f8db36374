"""The local runtime end to end with tiny Python scripts: restart policies, limits, signals, logs.

Runs go through :func:`mljob.local.run_file` in this process with the test framework (see
``localfw.py``), except the signal tests, which need ``mljob run`` to be a process of its own.
"""

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localfw import container, tiny_plugins, write_job

from mljob.local import run_file
from mljob.local.keeper import Keeper, stop_sessions

HERE = Path(__file__).parent


def replica(*args: str, **extra) -> dict:
    return container(["python", "replica.py", *args], **extra)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    shutil.copy(HERE / "replica.py", tmp_path / "replica.py")
    monkeypatch.setenv("STATE", str(tmp_path))
    yield tmp_path
    for pid in pids(tmp_path):  # a test that failed may have left some; the assertions say so
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(
    folder: Path, roles: dict, run_policy: dict | None = None, pod: dict | None = None, **kwargs
) -> tuple[int, str, str]:
    path = write_job(folder, roles, run_policy, pod)
    out, err = io.StringIO(), io.StringIO()
    code = run_file(path, plugins=tiny_plugins(), out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def pids(folder: Path) -> list[int]:
    return [int(line) for f in folder.glob("*.pids") for line in f.read_text().split()]


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for a reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def summary_row(out: str, name: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(name + " "))


def test_success_prefixes_lines_and_prints_a_summary(folder):
    code, out, _ = run(
        folder, {"Lead": (1, "Never", replica("exit", "0")), "Worker": (2, "Never", replica("exit", "0"))}
    )
    assert code == 0
    assert "[lead-0] lead-0 run 1: exit 0" in out
    assert "[worker-1] worker-1 run 1: exit 0" in out
    assert summary_row(out, "worker-1") == ["worker-1", "succeeded", "0", "0", summary_row(out, "worker-1")[-1]]
    assert out.rstrip().endswith("job succeeded in " + out.rstrip().rsplit(" ", 1)[-1])


@pytest.mark.parametrize("policy", ["Never", "ExitCode"])
def test_exit_1_fails_the_job_and_names_the_replica(folder, policy):
    roles = {"Lead": (1, policy, replica("sleep", "30")), "Worker": (2, policy, replica("exit", "0"))}
    code, out, _ = run(folder, {**roles, "Server": (1, policy, replica("exit", "1"))})
    assert code == 1
    assert out.rstrip().endswith("[mljob] job failed: server-0 exited with code 1")
    assert summary_row(out, "server-0")[1:3] == ["failed", "1"]
    assert summary_row(out, "lead-0")[1:3] == ["stopped", "SIGTERM"]
    assert not any(alive(pid) for pid in pids(folder))


def test_exit_137_under_exit_code_is_restarted(folder):
    code, out, _ = run(folder, {"Lead": (1, "ExitCode", replica("exit-first", "137"))})
    assert code == 0
    assert "[mljob] lead-0 exited with code 137" in out
    assert "[mljob] restarting lead-0 (restartPolicy ExitCode; restart 1 of backoffLimit 6)" in out
    assert "[lead-0] lead-0 run 2: exit-first 137" in out
    assert summary_row(out, "lead-0")[1:4] == ["succeeded", "0", "1"]


def test_flaky_replica_under_on_failure_is_restarted_until_it_succeeds(folder):
    roles = {"Worker": (2, "OnFailure", replica("fail-times", "2"))}
    code, out, _ = run(folder, roles, {"backoffLimit": 4})
    assert code == 0
    assert summary_row(out, "worker-0")[1:4] == ["succeeded", "0", "2"]
    assert summary_row(out, "worker-1")[1:4] == ["succeeded", "0", "2"]


def test_backoff_limit_counts_restarts_across_the_job(folder):
    roles = {"Lead": (1, "OnFailure", replica("sleep", "30")), "Worker": (2, "OnFailure", replica("exit", "3"))}
    code, out, _ = run(folder, roles, {"backoffLimit": 3})
    assert code == 1
    assert "[mljob] job failed: worker-" in out
    assert out.rstrip().endswith(" exited with code 3; backoffLimit 3 reached")
    assert not any(alive(pid) for pid in pids(folder))


def test_deadline_stops_the_job(folder):
    code, out, _ = run(folder, {"Lead": (1, "Never", replica("sleep", "60"))}, {"activeDeadlineSeconds": 1})
    assert code == 1
    assert summary_row(out, "lead-0")[1:3] == ["stopped", "SIGTERM"]
    assert "[mljob] job failed: activeDeadlineSeconds (1s) passed since startTime " in out
    assert "[mljob] tiny: 1 replica of tiny: lead-0=127.0.0.1:" in out
    assert not any(alive(pid) for pid in pids(folder))


def test_roles_that_run_until_stopped_are_stopped_on_success(folder):
    roles = {"Lead": (1, "Never", replica("sleep", "1")), "Server": (1, "Never", replica("grandchild"))}
    code, out, _ = run(folder, roles)
    assert code == 0
    assert summary_row(out, "server-0")[1:3] == ["stopped", "SIGTERM"]
    assert len(pids(folder)) == 3  # lead, server, the server's child
    assert not any(alive(pid) for pid in pids(folder))


def test_a_replica_that_exits_takes_its_leftover_children_with_it(folder):
    roles = {"Lead": (1, "Never", replica("grandchild", "0.2"))}
    code, _, _ = run(folder, roles)
    assert code == 0
    assert len(pids(folder)) == 2
    assert not any(alive(pid) for pid in pids(folder))


def test_a_child_in_a_process_group_of_its_own_goes_too(folder):
    code, out, _ = run(folder, {"Lead": (1, "Never", replica("regrouped", "0.2"))})
    assert code == 0
    assert "[lead-0] regrouped child started" in out
    assert len(pids(folder)) == 2
    assert not any(alive(pid) for pid in pids(folder))


def test_sigterm_is_followed_by_sigkill_after_the_grace_period(folder):
    roles = {"Lead": (1, "Never", replica("wait-for", "server-0.ready")), "Server": (1, "Never", replica("stubborn"))}
    code, out, _ = run(folder, roles, pod={"terminationGracePeriodSeconds": 1})
    assert code == 0
    assert "[server-0] SIGTERM ignored" in out
    assert summary_row(out, "server-0")[1:3] == ["stopped", "SIGKILL"]
    assert not any(alive(pid) for pid in pids(folder))


def test_logs_dir_has_one_file_per_replica(folder):
    logs = folder / "logs"
    roles = {
        "Lead": (1, "ExitCode", replica("exit-first", "137")),
        "Worker": (1, "Never", replica("exit", "0")),
        "Server": (1, "Never", container(["true"])),  # prints nothing
    }
    code, out, _ = run(folder, roles, logs_dir=logs)
    assert code == 0
    assert sorted(p.name for p in logs.iterdir()) == ["lead-0.log", "server-0.log", "worker-0.log"]
    assert (logs / "server-0.log").read_text() == ""
    lead = (logs / "lead-0.log").read_text().splitlines()
    assert lead[0] == "lead-0 run 1: exit-first 137"
    assert "restart 1 after lead-0 exited with code 137" in lead[1]
    assert lead[2] == "lead-0 run 2: exit-first 137"
    assert f"logs: {logs}/<replica>.log" in out


def test_logs_dir_that_is_a_file_is_refused_before_anything_starts(folder):
    (folder / "logs").write_text("not a folder")
    code, out, err = run(folder, {"Lead": (1, "Never", replica("exit", "0"))}, logs_dir=folder / "logs")
    assert code == 1
    assert out == ""
    assert (
        err
        == f"cannot run tiny locally:\n  --logs-dir {folder / 'logs'}: is a file; give a folder (created if missing)\n"
    )
    assert pids(folder) == []


def test_a_replica_log_that_cannot_be_written_is_refused_before_anything_starts(folder):
    logs = folder / "logs"
    (logs / "worker-1.log").mkdir(parents=True)
    code, out, err = run(folder, {"Worker": (2, "Never", replica("exit", "0"))}, logs_dir=logs)
    assert code == 1
    assert out == ""
    assert f"--logs-dir {logs}: cannot write {logs / 'worker-1.log'}: Is a directory" in err
    assert pids(folder) == []


def test_command_args_and_env_are_expanded_like_the_kubelet(folder):
    ctr = replica(
        "echo", "I am $(TINY_ME)", "$$(TINY_ME)", "$(NOPE)", env=[{"name": "MY_VAR", "value": "<$(TINY_ME)>"}]
    )
    code, out, _ = run(folder, {"Lead": (1, "Never", ctr)})
    assert code == 0
    assert "[lead-0] I am lead-0 $(TINY_ME) $(NOPE)" in out
    assert "[lead-0] MY_VAR=<lead-0>" in out
    assert "[lead-0] no newline at the end" in out


def test_value_from_is_refused_before_anything_starts(folder):
    ctr = replica("exit", "0", env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    code, out, err = run(folder, {"Lead": (1, "Never", ctr)})
    assert code == 1
    assert out == ""
    assert (
        "spec.replicaSpecs.Lead.template.spec.containers[0].env[0].valueFrom: TOKEN valueFrom is not supported" in err
    )
    assert pids(folder) == []


def test_a_file_of_several_jobs_is_refused(folder):
    path = write_job(folder, {"Lead": (1, "Never", replica("exit", "0"))})
    path.write_text(path.read_text() + "---\n" + path.read_text())
    err = io.StringIO()
    assert run_file(path, plugins=tiny_plugins(), out=io.StringIO(), err=err) == 1
    assert err.getvalue() == f"{path}: holds 2 MLJobs; mljob run runs one at a time\n"
    assert pids(folder) == []


def test_a_job_with_no_replicas_is_refused(folder):
    code, out, err = run(folder, {"Lead": (0, "Never", replica("exit", "0"))})
    assert (code, out) == (1, "")
    assert "every replicaSpecs entry has replicas: 0" in err


def test_an_invalid_job_is_reported_like_mljob_validate(folder):
    code, _, err = run(folder, {"Leader": (1, "Never", replica("exit", "0"))})
    assert code == 1
    assert "spec.replicaSpecs.Leader: unknown role 'Leader'" in err


def test_more_gpus_than_the_machine_has_is_an_error(folder, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ctr = replica("exit", "0", resources={"limits": {"nvidia.com/gpu": 1}})
    code, _, err = run(folder, {"Worker": (2, "Never", ctr)})
    assert code == 1
    assert "the job asks for 2 nvidia.com/gpu in all (worker-0 (1), worker-1 (1)) but this machine has 1 (0)" in err


def test_gpus_are_handed_out_disjointly(folder, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    gpu = replica("echo", "gpus=$(CUDA_VISIBLE_DEVICES)", resources={"limits": {"nvidia.com/gpu": 1}})
    roles = {"Lead": (1, "Never", replica("echo", "gpus=$(CUDA_VISIBLE_DEVICES)")), "Worker": (2, "Never", gpu)}
    code, out, _ = run(folder, roles)
    assert code == 0
    assert "[lead-0] gpus=" in out.splitlines()
    assert "[worker-0] gpus=3" in out
    assert "[worker-1] gpus=5" in out


def test_gpus_found_by_nvidia_smi_are_handed_out_disjointly(folder, monkeypatch):
    smi = folder / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    two = replica("echo", "gpus=$(CUDA_VISIBLE_DEVICES)", resources={"limits": {"nvidia.com/gpu": 2}})
    one = replica("echo", "gpus=$(CUDA_VISIBLE_DEVICES)", resources={"limits": {"nvidia.com/gpu": "1"}})
    code, out, _ = run(folder, {"Lead": (1, "Never", two), "Worker": (2, "Never", one)})
    assert code == 0
    assert "[mljob] CUDA_VISIBLE_DEVICES: lead-0=0,1, worker-0=2, worker-1=3" in out
    assert sorted(line for line in out.splitlines() if "] gpus=" in line) == [
        "[lead-0] gpus=0,1",
        "[worker-0] gpus=2",
        "[worker-1] gpus=3",
    ]


def start_driver(folder: Path, roles: dict, pod: dict | None = None) -> subprocess.Popen[str]:
    path = write_job(folder, roles, pod=pod)
    return subprocess.Popen(
        [sys.executable, str(HERE / "driver.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STATE": str(folder)},
    )


def wait_for_pids(folder: Path, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(pids(folder)) < count:
        assert time.monotonic() < deadline, f"only {len(pids(folder))} of {count} processes started"
        time.sleep(0.05)


def wait_for_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.01)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_every_replica_and_leaves_no_process(folder, signum, status):
    roles = {
        "Lead": (1, "Never", replica("grandchild")),
        "Worker": (2, "Never", replica("sleep", "300")),
        "Server": (1, "Never", replica("stubborn")),
    }
    driver = start_driver(folder, roles, pod={"terminationGracePeriodSeconds": 1})
    wait_for_pids(folder, 5)  # 4 replicas and the lead's child
    wait_for_file(folder / "server-0.ready")
    driver.send_signal(signum)
    out, _ = driver.communicate(timeout=30)
    assert driver.returncode == status, out
    assert f"job failed: interrupted by {signum.name}; stopped every replica" in out
    assert summary_row(out, "server-0")[1:3] == ["stopped", "SIGKILL"]
    assert summary_row(out, "worker-0")[1:3] == ["stopped", "SIGTERM"]
    assert [pid for pid in pids(folder) if alive(pid)] == []


def test_a_killed_mljob_leaves_no_replica_behind(folder):
    """SIGKILL gives mljob no chance to stop its replicas: its keeper does, as mljob would have."""
    roles = {
        "Lead": (1, "Never", replica("grandchild")),
        "Worker": (1, "Never", replica("sleep", "300")),
        "Server": (1, "Never", replica("stubborn")),
    }
    driver = start_driver(folder, roles, pod={"terminationGracePeriodSeconds": 1})
    wait_for_pids(folder, 4)  # 3 replicas and the lead's child
    wait_for_file(folder / "server-0.ready")
    driver.kill()
    out, _ = driver.communicate(timeout=30)
    wait_for_file(folder / "server-0.sigterm")  # SIGTERM first, as mljob would have
    deadline = time.monotonic() + 30
    while left := [pid for pid in pids(folder) if alive(pid)]:
        assert time.monotonic() < deadline, f"processes {left} outlived mljob"
        time.sleep(0.05)
    assert "mljob run died: stopping 3 replica(s) it left running" in out


def test_the_keeper_kills_what_ignores_sigterm_after_the_grace_period(tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(300)"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        wait_for_file(ready)
        stop_sessions({stubborn.pid: 0.2})
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


@pytest.mark.asyncio
async def test_a_keeper_told_done_leaves_the_sessions_alone():
    """A clean run ends its keeper, which then stops nothing: those session numbers may be reused."""
    keeper = Keeper()
    await keeper.start()
    process = keeper.process
    assert process is not None
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        keeper.hold(sleeper.pid, 1.0)
        await keeper.close()
        assert process.returncode == 0
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_when_the_output_is_closed_every_replica_is_stopped_without_a_traceback(folder):
    """``mljob run job.yaml | head``, or ``| tee`` ended by the same Ctrl-C: the reader goes away."""
    path = write_job(folder, {"Lead": (1, "Never", replica("chatty")), "Server": (1, "Never", replica("grandchild"))})
    driver = subprocess.Popen(
        [sys.executable, str(HERE / "driver.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STATE": str(folder)},
    )
    assert driver.stdout is not None
    assert driver.stderr is not None
    wait_for_pids(folder, 3)  # lead, server and the server's child
    while b"still here" not in driver.stdout.readline():  # the run is under way
        pass
    driver.stdout.close()
    try:
        status = driver.wait(timeout=30)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise
    err = driver.stderr.read().decode()
    assert status == 128 + signal.SIGPIPE, err
    assert err == ""
    assert [pid for pid in pids(folder) if alive(pid)] == []


def test_a_second_ctrl_c_kills_at_once(folder):
    roles = {"Lead": (1, "Never", replica("stubborn"))}
    driver = start_driver(folder, roles, pod={"terminationGracePeriodSeconds": 60})
    wait_for_file(folder / "lead-0.ready")
    driver.send_signal(signal.SIGINT)
    wait_for_file(folder / "lead-0.sigterm")  # mljob is stopping the replica
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=30)  # the grace period is 60 s: only the second SIGINT ends it this soon
    assert driver.returncode == 130, out
    assert "SIGINT again: killing every replica" in out
    assert [pid for pid in pids(folder) if alive(pid)] == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_live_status_line_counts_replicas_restarts_and_time(folder):
    path = write_job(folder, {"Lead": (1, "ExitCode", replica("exit-first", "137"))}, {"backoffLimit": 2})
    out = Terminal()
    code = run_file(path, plugins=tiny_plugins(), out=out, err=io.StringIO())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # without colours and cursor moves
    assert code == 0
    assert re.search(r"running 1 · succeeded 0 · failed 0 · restarts 0/2 · \d+\.\ds", text)
    assert "[lead-0] lead-0 run 2: exit-first 137" in text
    assert summary_row(text.replace("\r", "\n"), "lead-0")[1:4] == ["succeeded", "0", "1"]
