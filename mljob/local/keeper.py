"""A killed ``mljob run`` leaves no replica behind: a keeper process stops them when mljob dies.

SIGINT, SIGTERM and SIGHUP reach mljob, which stops every replica itself; SIGKILL (``kill -9``,
the OOM killer) gives it no chance, and each replica runs in a session of its own, so nothing
else would. A parent-death signal would not do: it reaches only direct children, not
``torchrun``'s workers. So each run starts a keeper: a stdlib-only process in a session of its
own that reads a pipe only mljob holds. mljob tells it each replica's session (and its grace
period) when the replica starts and when its processes are gone, and says ``done`` when the run
ends. If the pipe closes without ``done``, mljob died: the keeper stops every session it still
holds as mljob would have — SIGTERM, then SIGKILL after the grace period — and exits.

Run as ``python -I -S keeper.py``: it imports nothing of mljob, so it starts in milliseconds and
never keeps a replica waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the keeper's own process never imports asyncio: the import would slow its start
    import asyncio

PROC = Path("/proc")
DONE = b"done"
KILL_TIMEOUT = 5.0
"""How long the keeper repeats SIGKILL for processes that fork while it kills them."""


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies are dead already); ``[]`` without ``/proc``.

    A session, not a process group: a child that moved itself into a group of its own (a shell
    with job control) is still the replica's.
    """
    members: list[int] = []
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return members
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def stop_sessions(sessions: dict[int, float], poll: float = 0.05) -> None:
    """SIGTERM every process of each session, SIGKILL what is left after its grace period."""
    start = time.monotonic()
    for sid in sessions:
        _signal(session_members(sid), signal.SIGTERM)
    waiting = dict(sessions)
    while waiting:
        now = time.monotonic() - start
        for sid, grace in list(waiting.items()):
            members = session_members(sid)
            if not members:
                del waiting[sid]
            elif now >= grace:
                _signal(members, signal.SIGKILL)
                if now >= grace + KILL_TIMEOUT:  # stuck in the kernel: nothing more to do
                    del waiting[sid]
        time.sleep(poll)


def main() -> int:
    """Hold the sessions mljob reports (``SID GRACE`` to add, ``-SID`` to forget) until ``done`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only mljob's death ends a keeper early
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sessions: dict[int, float] = {}
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line == DONE:
            return 0
        if line.startswith(b"-"):
            sessions.pop(int(line[1:]), None)
        elif line:
            sid, grace = line.split()
            sessions[int(sid)] = float(grace)
    if sessions:
        with contextlib.suppress(OSError):
            print(f"[mljob] mljob run died: stopping {len(sessions)} replica(s) it left running", file=sys.stderr)
        stop_sessions(sessions)
    return 0


class Keeper:
    """mljob's end of the pipe. Without a keeper (it could not start), every call does nothing."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        import asyncio  # here, not at the top: see TYPE_CHECKING above

        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                __file__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is mljob's to handle, not the keeper's
            )
        except OSError:
            self.process = None

    def _send(self, line: bytes) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.process.stdin.write(line + b"\n")

    def hold(self, sid: int, grace: float) -> None:
        """A replica started in session ``sid``: stop it if mljob dies."""
        self._send(b"%d %f" % (sid, grace))

    def release(self, sid: int) -> None:
        """Session ``sid`` is gone: forget it (its number may be reused)."""
        self._send(b"-%d" % sid)

    async def close(self) -> None:
        """The run ended and stopped its replicas itself: the keeper exits and does nothing."""
        import asyncio  # here, not at the top: see TYPE_CHECKING above

        process, self.process = self.process, None
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            process.stdin.write(DONE + b"\n")
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
