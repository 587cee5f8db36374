"""One container as host processes: started inside its pod's sandbox, its output logged, stopped leaving nothing.

A container's argv is wrapped, outermost first::

    setpriv --pdeathsig KILL --                  # dies with the agent, whatever killed it
      <the sandbox's prefix>                     # the pod's namespaces (network side); each step execs
      unshare --pid --fork --kill-child --mount --mount-proc --
      sh -c SHIM <cgroups> -- <binds> -- <workingDir> <argv>  # PID 1: joins its cgroups, binds, cd, runs

so every process of the container lives in a PID namespace of its own. That is what keeps "no process left
behind" true: when the namespace's first process dies the kernel kills every other one in it, even those that
left the process group or the session; and that process gets SIGKILL when the ``unshare`` above it dies
(``--kill-child``), which gets SIGKILL when the agent dies (``setpriv --pdeathsig``, kept across each exec of
the prefix). A mount namespace per container carries its volume binds (an emptyDir is the same host folder bound
into each container that mounts it) and leaves the host's mount table alone.

Without root the same chain runs in a user namespace (``unshare --user --map-root-user``) where the kernel
allows it; :func:`detect_isolation` says which, or why neither works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mljob.local.procs import kill_session, signal_group
from mljob.nodeagent.logs import LogWriter
from mljob.nodeagent.podspec import ContainerLaunch

MOUNT_SHIM = r"""
fail() { echo "mljob-node-agent: $*" >&2; exit 128; }
while [ "$1" != -- ]; do
  echo $$ > "$1/cgroup.procs" || fail "cannot join the cgroup $1"
  mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" || fail "cannot show the cgroup $1 at $2"
  shift 2
done
shift
layers=0 mounted=
inside() { for m in $mounted; do case "$1/" in "$m"/*) return 0;; esac; done; return 1; }
point() {  # make mount point $1 (a folder, or a file when $2 is f); see "A bind needs a mount point" below
  p=$1
  while [ ! -e "$p" ]; do p=$(dirname "$p"); done
  if [ "$p" != "$1" ] && [ "$p" != / ] && [ -n "$scratch" ] && ! inside "$p"; then
    layers=$((layers + 1)); u=layer$layers j=0
    subs=$(awk -v p="$(readlink -f "$p")/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo)  # resolved, as there
    kept=
    for m in $subs; do  # the mounts below $p (the pod's /etc/hosts...): kept, on top of the overlay
      j=$((j + 1)); if [ -d "$m" ]; then mkdir "$u.m$j"; else : > "$u.m$j"; fi
      mount --bind "$m" "$u.m$j" 2>/dev/null && kept="$kept $j:$m"  # one gone meanwhile (a pod's netns) is no loss
    done
    mkdir "$u" "$u.work" && mount -t overlay overlay -o "lowerdir=$p,upperdir=$u,workdir=$u.work" "$p" || return 1
    for e in $kept; do
      j=${e%%:*} m=${e#*:}; mount --no-canonicalize --bind "$u.m$j" "$m" 2>/dev/null || [ ! -e "$m" ] || return 1
    done
  fi
  if [ "$2" = d ]; then mkdir -p "$1"; else mkdir -p "$(dirname "$1")" && { [ -e "$1" ] || : > "$1"; }; fi
}
scratch=$1; shift
if [ -n "$scratch" ]; then  # every source staged first, in a tmpfs this shell works in: see "Staged" below
  mkdir -p "$scratch" && mount -t tmpfs -o mode=700 tmpfs "$scratch" && cd "$scratch" || fail "cannot use $scratch"
  n=0 k=0
  for a do
    [ "$a" = -- ] && break
    k=$((k + 1)); [ $((k % 3)) = 1 ] || continue
    n=$((n + 1))
    if [ -d "$a" ]; then mkdir "v$n"; else : > "v$n"; fi && mount --bind "$a" "v$n" || fail "cannot bind $a"
  done
fi
n=0
while [ "$1" != -- ]; do
  src=$1 dst=$2 mode=$3; shift 3; n=$((n + 1))
  if [ -n "$scratch" ]; then from=v$n; else from=$src; fi
  if [ -d "$from" ]; then kind=d; else kind=f; fi
  point "$dst" $kind || fail "cannot create mount point $dst"
  mount --no-canonicalize --bind "$from" "$dst" || fail "cannot bind $src at $dst"
  mounted="$mounted $dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dst" || fail "cannot make $dst read-only"; fi
done
shift
cd "$1" 2>/dev/null || fail "workingDir $1: no such folder"
shift
"$@" &
wait $!
"""
"""Runs as PID 1 of the container's namespaces: join the container's cgroups, bind each volume, enter the working
folder, run the command and exit with its status, 128 + N when signal N killed it.

The cgroups come first, as runc puts a container's init in them before it execs: the shell writes its own pid
(``$$``, which the kernel reads in the writer's PID namespace) into each ``cgroup.procs``, so the command, forked
after, starts inside its limits and nothing it allocates escapes them. Each cgroup folder is then bound read-only
over its hierarchy's mount point (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/cpu``, or ``/sys/fs/cgroup`` on v2),
so the container reads its own limits where a container would (``memory.limit_in_bytes``, ``cpu.max``...).

A bind needs a mount point, and the container's files are the host's. A ``mountPath`` missing below a folder other
than ``/`` (the ServiceAccount token's ``/var/run/secrets/kubernetes.io/serviceaccount``, where the host has
``/run`` only) is made in an overlay of that folder, private to the container's mount namespace (its upper layer
in a tmpfs on the container's scratch folder): the host is left untouched, and in particular no
``/var/run/secrets/kubernetes.io`` appears on it, which tools such as Kubeflow's SDK take as "running in a pod".
The mounts below that folder (the pod's own ``/etc/hosts`` and ``resolv.conf``..., and an earlier volume's: two
``mountPath``s under ``/var/run/secrets`` make two overlays) are bound again on top of the overlay, so the container
still sees them; they are found by the folder's resolved path, as ``mountinfo`` names them (``/var/run`` is
``/run``). Under ``/run`` that includes other pods' network namespaces (``/run/netns``), which come and go as the
shim works: one gone by the time it is bound is skipped, not a failure of the container. A missing top-level
``mountPath`` (``/data``) is made on the host as an empty folder, as before: an
overlay of ``/`` would hide ``/proc``, ``/sys`` and ``/dev``.

A mount point inside a volume the shim has already bound (a folder of an emptyDir mounted at ``/tmp``) is made in
that volume's folder, as runc makes a nested mount's point inside the outer volume.

Staged: the sources are host paths, and one volume's ``mountPath`` may cover another's source (an emptyDir at
``/tmp`` while the agent's state folder is under ``/tmp``, as in the operator's own Deployment). So every source is
first bound into a tmpfs on the scratch folder, which the shell then works in (``cd``): its entries are reached by
relative paths (``mount --no-canonicalize``), which no mount above can hide. A runtime does the same by resolving
every source before it mounts anything.

The command is PID 1's child rather than PID 1 itself because ``unshare`` (util-linux 2.38) reports a child
killed by a signal as exit 1, which would make an OOM kill (137) look like an ordinary failure. PID 1 ignores
SIGTERM (no handler) and waits; the command gets the signal with the rest of the process group. A failure here is
the container's (exit 128 with the reason on stderr, so in its log), as a runtime's start error is."""

PDEATHSIG = ("setpriv", "--pdeathsig", "KILL", "--")
NAMESPACES = ("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc")
ROOTLESS = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc")
READ_CHUNK = 64 * 1024


class IsolationError(RuntimeError):
    """Neither a PID namespace as root nor one in a user namespace can be made here."""


def detect_isolation() -> tuple[str, ...]:
    """The ``unshare`` that gives each container its PID and mount namespaces here, tried for real."""
    problems = []
    for candidate in (NAMESPACES, ROOTLESS):
        try:
            done = subprocess.run(
                [*candidate, "--", "true"], capture_output=True, text=True, timeout=30, check=False
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"{' '.join(candidate)}: {error}")
            continue
        if done.returncode == 0:
            return candidate
        problems.append(f"{' '.join(candidate)}: {done.stderr.strip() or done.returncode}")
    raise IsolationError(
        "the node agent runs each container in PID and mount namespaces of its own, so that no process outlives "
        "its pod or the agent; that needs root (or unprivileged user namespaces): " + "; ".join(problems)
    )


def wrap(
    launch: ContainerLaunch,
    prefix: Sequence[str],
    isolation: Sequence[str],
    cgroups: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The full argv of a container's process (see the module docstring); ``cgroups``: (cgroup folder, mount point)
    pairs its PID 1 joins and shows (mljob.nodeagent.cgroups)."""
    joins = [part for pair in cgroups for part in pair]
    binds: list[str] = []
    for m in launch.mounts:
        binds += [m.source, m.path, "ro" if m.read_only else "rw"]
    return [
        *PDEATHSIG,
        *prefix,
        *isolation,
        "--",
        "sh",
        "-c",
        MOUNT_SHIM,
        "mljob-container",
        *joins,
        "--",
        launch.scratch,
        *binds,
        "--",
        launch.working_dir,
        *launch.argv,
    ]


@dataclass
class Exit:
    """How a container's process ended: its return code (negative: killed by that signal)."""

    returncode: int


class ContainerProcess:
    """A started container; :meth:`wait` for its end, :meth:`stop` to end it (SIGTERM, grace, SIGKILL)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: LogWriter) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]

    @classmethod
    async def start(
        cls,
        launch: ContainerLaunch,
        prefix: Sequence[str],
        isolation: Sequence[str],
        log_path: Path,
        cgroups: Sequence[tuple[str, str]] = (),
    ) -> ContainerProcess:
        """Start it in a session of its own (its pid is the group to signal) with its output logged to a file.

        Started from the event loop's thread on purpose: a parent-death signal follows the thread that forked.
        """
        log = LogWriter(log_path)
        proc = await asyncio.create_subprocess_exec(
            *wrap(launch, prefix, isolation, cgroups),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(launch.env),
            cwd="/",
            start_new_session=True,
        )
        return cls(proc, log)

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(READ_CHUNK):
            self.log.feed(name, chunk)
        self.log.close_stream(name)

    async def wait(self) -> Exit:
        """The container's end, once its output is all in the log."""
        code = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self.log.close()
        return Exit(code)

    async def stop(self, grace: float) -> None:
        """SIGTERM the container's process group, SIGKILL after ``grace`` seconds; returns when none is left."""
        if self.proc.returncode is None:
            signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), max(grace, 0.0))
        if self.proc.returncode is None:
            signal_group(self.pid, signal.SIGKILL)
        await kill_session(self.pid)
        await self.proc.wait()

    def kill_now(self) -> None:
        """SIGKILL without waiting (the agent is going away)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
