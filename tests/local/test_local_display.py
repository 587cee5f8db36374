"""What a person sees, without running anything: the status line's words and a closed output."""

import io
from pathlib import Path

import yaml
from localfw import Tiny, container, write_job

from mljob import MLJob, Replica
from mljob.local.display import Counts, Display, status_text
from mljob.local.launch import Launch
from mljob.local.policy import Observed, State
from mljob.local.supervisor import Supervisor


def test_status_line_counts_replicas_restarts_and_time():
    text = status_text(Counts(running=2, succeeded=1, failed=0, restarts=1, backoff_limit=6, elapsed=4.25)).plain
    assert text == " running 2 · succeeded 1 · failed 0 · restarts 1/6 · 4.2s"


def test_status_line_shows_stopped_replicas_once_there_are_some():
    counts = Counts(running=1, succeeded=0, failed=0, restarts=0, backoff_limit=6, elapsed=61, stopped=2)
    assert status_text(counts).plain == " running 1 · succeeded 0 · failed 0 · stopped 2 · restarts 0/6 · 1m01s"


def test_replicas_stopped_by_mljob_do_not_count_as_failed(tmp_path: Path):
    roles = {"Lead": (1, "Never", container(["true"])), "Worker": (3, "Never", container(["true"]))}
    job = MLJob.model_validate(yaml.safe_load(write_job(tmp_path, roles).read_text()))
    replicas = [Replica("Lead", 0), *(Replica("Worker", i) for i in range(3))]
    launches = {r: Launch(r, ("true",), {}, {}, tmp_path) for r in replicas}
    supervisor = Supervisor(job, Tiny(), launches, Display(io.StringIO(), live=False))
    lead, stopped, failed, running = (supervisor.records[r] for r in replicas)
    lead.observed = Observed(State.EXITED, 0)
    stopped.observed, stopped.stopped = Observed(State.EXITED, -15), True
    failed.observed = Observed(State.EXITED, 1)
    running.observed = Observed(State.RUNNING)
    counts = supervisor.counts()
    assert (counts.running, counts.succeeded, counts.failed, counts.stopped) == (1, 1, 1, 1)


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_output_quiets_the_display_and_tells_its_owner_once():
    display = Display(ClosedPipe(), live=False)
    told: list[bool] = []
    display.on_closed = lambda: told.append(True)
    display.line("worker-0", "step 1")
    display.say("worker-0 exited with code 0")
    display.summary([])
    assert display.closed
    assert told == [True]
