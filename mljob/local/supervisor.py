"""The process side of a local run: spawn replicas, stream their output, await their exits.

Thin on purpose: every decision (restart, fail, succeed, stop) comes from
:func:`mljob.local.policy.decide`; this module turns it into processes. Each replica runs in a
session of its own, so stopping it signals its whole process group (``torchrun``'s workers,
a shell's children) and Ctrl-C in the terminal reaches mljob alone, which then stops every
replica: SIGTERM, then SIGKILL after the grace period. SIGTERM, SIGHUP (the terminal closed)
and the output's reader going away (SIGPIPE's case) stop them the same way; if mljob itself is
killed, its keeper (:mod:`mljob.local.keeper`) does. When a replica's program exits, whatever
it left in its session is killed and awaited (:mod:`mljob.local.procs`) before the exit counts,
as a pod's processes end with its container. Exits are awaited, never polled; the only timer
is the job's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mljob.api import MLJob
from mljob.core.progress import Progress
from mljob.core.render import restart_policy
from mljob.framework import Framework, Replica
from mljob.local.display import Counts, Display, LogFiles, SummaryRow
from mljob.local.keeper import Keeper
from mljob.local.launch import Launch
from mljob.local.policy import Decision, Finish, Observed, Restart, Start, State, Terminate, decide, describe_exit
from mljob.local.procs import kill_session, signal_group

INTERRUPTED = "Interrupted"
SETTLE_SECONDS = 0.05
"""How long after an exit (or a wake-up) more exits are gathered into the same decision: the operator's debounce."""
CANNOT_START = 127
"""The exit code recorded when a replica's program cannot be executed, as a shell reports it."""
LONGEST_LINE = 1 << 20
"""A line longer than this is shown in pieces rather than held in memory."""
DRAIN_SECONDS = 5.0
"""How long to wait for a replica's output after it exited (a daemon it left may hold the pipe)."""


@dataclass(frozen=True)
class Exited:
    replica: Replica
    exit_code: int


@dataclass(frozen=True)
class Interrupted:
    signum: int
    """The signal that stopped the run; SIGPIPE when the output's reader went away."""


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop every replica gracefully; the exit status is then 128 + the signal's number."""


Event = Exited | Interrupted


class _Protocol(asyncio.SubprocessProtocol):
    """Lines as they arrive, and the exit as soon as the process ends.

    ``Process.wait()`` in Python 3.11 also waits for the output pipe to close, which never
    happens while a grandchild holds it; the protocol reports the exit itself, so the
    replica's leftovers can be killed right then, as the kubelet does when a container ends.
    """

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.on_line = on_line
        self.pending = b""
        self.exited: asyncio.Future[int] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.pending += data if isinstance(data, bytes) else data.encode()
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.on_line(line)
        if len(self.pending) > LONGEST_LINE:
            self.on_line(self.pending)
            self.pending = b""

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self.pending:
            self.on_line(self.pending)
            self.pending = b""
        if not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        assert self.transport is not None
        code = self.transport.get_returncode()
        if not self.exited.done():
            self.exited.set_result(code if code is not None else CANNOT_START)


@dataclass
class Record:
    """One replica's history in this run."""

    launch: Launch
    observed: Observed = field(default_factory=Observed)
    restarts: int = 0
    pid: int | None = None
    running: bool = False
    """Whether the process (its group leader) is alive."""
    watcher: asyncio.Task[None] | None = None
    first_start: float | None = None
    first_launched: float | None = None
    """When the first process was running the replica's program (exec done), on the run's clock."""
    ended: float | None = None
    stopped: bool = False
    """Stopped by mljob (the job finished or was interrupted), not exited on its own."""


@dataclass(frozen=True)
class RunResult:
    """How the run ended, with everything the summary and a benchmark need."""

    finish: Finish
    exit_status: int
    rows: list[SummaryRow]
    restarts: int
    elapsed: float
    launched: dict[Replica, float]
    """Seconds from the start of the run until each replica's program first ran (its exec done)."""


class Supervisor:
    """Runs one job's replicas to a finish; create one per run."""

    def __init__(
        self,
        job: MLJob,
        framework: Framework,
        launches: Mapping[Replica, Launch],
        display: Display,
        logs: LogFiles | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[], Progress] | None = None,
    ) -> None:
        self.job = job
        self.framework = framework
        self.records = {replica: Record(launch) for replica, launch in launches.items()}
        self.display = display
        self.logs = logs
        self.clock = clock
        self.progress = progress
        """What the job reported so far (its progress endpoint's), for the status line."""
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.restarts = 0
        self.started = 0.0
        self.wall_start = datetime.now(UTC)
        """The run's start on the wall clock: the deadline's startTime; elapsed time is the run's own clock's."""
        self.stopping = False
        self.interrupted: int | None = None
        self.keeper = Keeper()
        display.on_closed = self._on_output_closed

    def counts(self) -> Counts:
        running = succeeded = failed = stopped = 0
        for record in self.records.values():
            code = record.observed.exit_code
            if record.observed.state is State.RUNNING:
                running += 1
            elif record.observed.state is State.EXITED and record.stopped:
                stopped += 1
            elif record.observed.state is State.EXITED and code == 0:
                succeeded += 1
            elif record.observed.state is State.EXITED:
                failed += 1
        limit = self.job.spec.run_policy.backoff_limit
        progress = self.progress() if self.progress is not None else None
        elapsed = self.clock() - self.started
        return Counts(running, succeeded, failed, self.restarts, limit, elapsed, stopped, progress)

    async def run(self) -> RunResult:
        """Start the replicas, apply the policy until the job finishes, stop what still runs."""
        loop = asyncio.get_running_loop()
        self.started = self.clock()
        self.wall_start = datetime.now(UTC)
        handled = _install_signals(loop, self._on_signal)
        self.display.start(self.counts)
        if self.display.closed:  # the reader left before the run began
            self._on_output_closed()
        try:
            await self.keeper.start()
            decision = await self._drive()
            finish = decision.finish
            assert finish is not None
            await self._stop_all([a for a in decision.actions if isinstance(a, Terminate)])
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            self._kill_all(signal.SIGKILL)  # only does something if we got here by an exception
            await self.keeper.close()
            self.display.stop()
            if self.logs is not None:
                self.logs.close()
        return self._result(finish)

    async def _drive(self) -> Decision:
        while True:
            now = self.wall_start + timedelta(seconds=self.clock() - self.started)
            observed = {r: record.observed for r, record in self.records.items()}
            decision = decide(self.job, self.framework, observed, self.restarts, self.wall_start, now)
            if decision.finish is not None:
                return decision
            for action in decision.actions:
                if isinstance(action, Start):
                    await self._spawn(action.replica)
                elif isinstance(action, Restart):
                    self._note_restart(action)
                    await self._spawn(action.replica)
            events = await self._next_events(decision)
            for event in events:
                if isinstance(event, Interrupted):
                    return self._interrupted(event)
            for event in events:
                assert isinstance(event, Exited)
                self._note_exit(event)

    async def _next_events(self, decision: Decision) -> list[Event]:
        """What happened since the decision: none when its wake-up time came first.

        Then :data:`SETTLE_SECONDS` more, so that exits a moment apart (a chief's success and a worker's
        failure, a failure and the deadline) are one observation, judged together as the operator judges a
        burst of pod events in one pass, not in whichever order the processes happened to be reaped.
        """
        timeout = None
        if decision.wake_at is not None:
            timeout = max(0.0, (decision.wake_at - self.wall_start).total_seconds() - (self.clock() - self.started))
        events: list[Event] = []
        with contextlib.suppress(TimeoutError):  # the wake-up time came: the deadline
            events.append(await asyncio.wait_for(self.events.get(), timeout))
        await asyncio.sleep(SETTLE_SECONDS)
        while not self.events.empty():
            events.append(self.events.get_nowait())
        return events

    def _interrupted(self, event: Interrupted) -> Decision:
        """Ctrl-C, SIGTERM or a closed output: stop every replica, whatever the rulebook would say."""
        self.interrupted = event.signum
        name = signal.Signals(event.signum).name
        why = "the output was closed (SIGPIPE)" if event.signum == signal.SIGPIPE else f"interrupted by {name}"
        finish = Finish(False, INTERRUPTED, f"{why}; stopped every replica")
        running = [Terminate(r) for r, record in self.records.items() if record.running]
        return Decision((*running, finish))

    def _note_exit(self, event: Exited) -> None:
        record = self.records[event.replica]
        record.observed = Observed(State.EXITED, event.exit_code)
        record.ended = self.clock()
        if record.stopped:
            self.display.say(f"stopped: {describe_exit(event.replica, event.exit_code)}")
        else:
            self.display.say(describe_exit(event.replica, event.exit_code), "dim" if event.exit_code == 0 else "red")

    def _note_restart(self, action: Restart) -> None:
        self.restarts += 1
        record = self.records[action.replica]
        record.restarts += 1
        policy = restart_policy(self.job, self.framework, action.replica.role).value
        limit = self.job.spec.run_policy.backoff_limit
        self.display.say(
            f"restarting {action.replica} (restartPolicy {policy}; restart {self.restarts} of backoffLimit {limit})",
            "yellow",
        )
        if self.logs is not None:
            self.logs.mark(
                action.replica, f"restart {record.restarts} after {describe_exit(action.replica, action.exit_code)}"
            )

    async def _spawn(self, replica: Replica) -> None:
        record = self.records[replica]
        launch = record.launch
        now = self.clock()
        if record.first_start is None:
            record.first_start = now
        record.observed = Observed(State.RUNNING)
        if self.logs is not None:
            self.logs.open(replica)
        loop = asyncio.get_running_loop()
        protocol = _Protocol(lambda raw: self._emit(replica, raw))
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: protocol,
                *launch.argv,
                env=dict(launch.env),
                cwd=launch.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self.display.say(f"{replica}: cannot start {launch.argv[0]}: {error}", "red")
            record.pid = None
            self.events.put_nowait(Exited(replica, CANNOT_START))
            return
        record.pid = transport.get_pid()
        self.keeper.hold(record.pid, launch.grace_seconds)
        record.running = True
        if record.first_launched is None:
            record.first_launched = self.clock()
        record.watcher = asyncio.create_task(self._watch(replica, record, transport, protocol))

    async def _watch(
        self, replica: Replica, record: Record, transport: asyncio.SubprocessTransport, protocol: _Protocol
    ) -> None:
        code = await protocol.exited
        record.running = False
        left = await kill_session(transport.get_pid())  # what the replica left behind dies with it, as in a pod
        self.keeper.release(transport.get_pid())
        if left:
            self.display.say(f"{replica}: processes {', '.join(map(str, left))} did not die on SIGKILL", "red")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.drained), DRAIN_SECONDS)
        transport.close()
        if self.stopping:  # nothing decides any more: just record it
            self._note_exit(Exited(replica, code))
        else:
            self.events.put_nowait(Exited(replica, code))

    def _emit(self, replica: Replica, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if "\r" in text:  # a progress bar redrawn in place: its latest state
            text = text.rsplit("\r", 1)[-1]
        self.display.line(str(replica), text)
        if self.logs is not None:
            self.logs.write(replica, text)

    def _on_signal(self, signum: int) -> None:
        if self.stopping:  # a second Ctrl-C while stopping: no more grace
            self.display.say(f"{signal.Signals(signum).name} again: killing every replica", "red")
            self._kill_all(signal.SIGKILL)
        else:
            self.events.put_nowait(Interrupted(signum))

    def _on_output_closed(self) -> None:
        """Nobody reads what the replicas print any more: stop the job, as SIGPIPE would stop a command."""
        if not self.stopping:
            self.events.put_nowait(Interrupted(signal.SIGPIPE))

    async def _stop_all(self, stops: Sequence[Terminate]) -> None:
        """SIGTERM each replica's group after its linger, SIGKILL after the grace period, await every exit."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        for stop in stops:
            record = self.records[stop.replica]
            if record.pid is None or not record.running:
                continue
            grace = record.launch.grace_seconds
            timers.append(loop.call_later(stop.linger, self._terminate, record, signal.SIGTERM))
            timers.append(loop.call_later(stop.linger + grace, self._terminate, record, signal.SIGKILL))
        watchers = [r.watcher for r in self.records.values() if r.watcher is not None]
        if watchers:
            await asyncio.wait(watchers)
        for timer in timers:
            timer.cancel()
        while not self.events.empty():  # exits that came in with the event that finished the job
            event = self.events.get_nowait()
            if isinstance(event, Exited):
                self._note_exit(event)

    def _terminate(self, record: Record, signum: int) -> None:
        if record.pid is not None and record.running:
            record.stopped = True
            signal_group(record.pid, signum)

    def _kill_all(self, signum: int) -> None:
        for record in self.records.values():
            if record.pid is not None and record.running:
                signal_group(record.pid, signum)

    def _result(self, finish: Finish) -> RunResult:
        end = self.clock()
        rows = [self._row(replica, record, end) for replica, record in self.records.items()]
        if finish.succeeded:
            status = 0
        elif finish.reason == INTERRUPTED and self.interrupted is not None:
            status = 128 + self.interrupted
        else:
            status = 1
        launched = {
            r: rec.first_launched - self.started for r, rec in self.records.items() if rec.first_launched is not None
        }
        return RunResult(finish, status, rows, self.restarts, end - self.started, launched)

    def _row(self, replica: Replica, record: Record, end: float) -> SummaryRow:
        code = record.observed.exit_code
        if record.first_start is None:
            result = "not started"
        elif record.stopped:
            result = "stopped"
        elif code == 0:
            result = "succeeded"
        elif code is None:
            result = "running"
        else:
            result = "failed"
        shown = "" if code is None else (signal.Signals(-code).name if code < 0 and -code in _SIGNALS else str(code))
        start = record.first_start if record.first_start is not None else end
        duration = (record.ended or end) - start
        return SummaryRow(str(replica), result, shown, record.restarts, duration)


_SIGNALS = {s.value for s in signal.Signals}


def _install_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> list[int]:
    """Route :data:`STOPPING_SIGNALS` to ``handler`` when this is the main thread (else leave them)."""
    installed: list[int] = []
    for signum in STOPPING_SIGNALS:
        try:
            loop.add_signal_handler(signum, handler, signum)
        except (ValueError, RuntimeError, NotImplementedError):
            continue
        installed.append(signum)
    return installed
