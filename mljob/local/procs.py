"""What a replica leaves behind: find its processes, kill them, and wait until they are gone.

Every replica starts in a session of its own (its pid is the session and process-group id), so
its children — ``torchrun``'s workers, a shell's pipeline, a data-loader pool — can be found
and killed when it ends, as the kubelet kills a container's processes with its main one. A
signal is only a request: the caller learns the processes are gone by awaiting their pidfds
(Linux), not by trusting ``kill()``, so "no process is left" holds the moment a run returns.
Where there is no ``/proc`` or no pidfd, the group is signalled and briefly polled instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from mljob.local.keeper import session_members

POLL_SECONDS = 0.01
"""Polling interval of the fallback without pidfds."""


def signal_group(pgid: int, signum: int) -> None:
    """Signal a replica's whole process group; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def kill_session(sid: int, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process of session ``sid`` and return when all are dead.

    Returns the pids still alive after ``timeout`` seconds (a process stuck in the kernel), so
    the caller can say so; normally ``[]``. Repeats until a look at ``/proc`` finds no member,
    since a member may have forked between the look and the kill.
    """
    signal_group(sid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while members := session_members(sid):
        left = deadline - time.monotonic()
        if left <= 0:
            return members
        await _kill_and_await(members, left)
    return []


async def _kill_and_await(pids: list[int], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[None]] = []
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except (AttributeError, OSError):  # no pidfds here: signal, then poll
                _kill(pid)
                await asyncio.sleep(POLL_SECONDS)
                continue
            fds.append(fd)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            done: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, done)
            waiting.append(done)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
