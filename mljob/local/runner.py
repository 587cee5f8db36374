"""``mljob run FILE``: check the job, plan every replica's process, supervise them, summarise.

The CLI's ``run`` command only calls :func:`run_file`. Tests and benchmarks call it too, with
their own :class:`~mljob.plugins.Plugins` (``load_plugins(entry_points=False, extra=[...])``)
and output stream, so nothing here reads global state they cannot replace.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from mljob.api import MLJob
from mljob.framework import Framework, Replica, replicas_of
from mljob.local.cluster import LocalCluster
from mljob.local.display import Display, LogFiles, format_duration
from mljob.local.gpus import GpuError, assign_gpus, detect_gpus, gpu_requests
from mljob.local.jobfiles import STDIN, JobFileError, job_and_framework, load_jobs
from mljob.local.launch import Launches, plan
from mljob.local.progress import ProgressServer, final
from mljob.local.supervisor import RunResult, Supervisor
from mljob.plugins import PluginError, Plugins

EXIT_FAILED = 1
"""The job failed, or could not start (invalid, or needs what only a cluster has): the CLI's "bad input"."""


class CannotRun(Exception):
    """The job cannot start locally; the message lists every reason."""


def prepare(
    job: MLJob,
    framework: Framework,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> tuple[Launches, LocalCluster]:
    """Ports, GPUs and every replica's process, or :class:`CannotRun` with the reasons.

    ``folder`` is the run's own folder (made by the caller, removed after the run), where the files a
    framework asks for are written; without one, a framework that asks for files cannot run.
    """
    environ = dict(os.environ if environ is None else environ)
    replicas = replicas_of(job)
    if not replicas:
        raise CannotRun("the job has no replicas to run (every replicaSpecs entry has replicas: 0)")
    requests, problems = gpu_requests(job, framework)
    if problems:
        raise CannotRun("\n".join(str(p) for p in problems))
    gpus: Mapping[Replica, tuple[str, ...]] | None = None
    if any(requests.values()):
        try:
            gpus = assign_gpus(requests, detect_gpus(environ))
        except GpuError as error:
            raise CannotRun(str(error)) from error
    cluster = LocalCluster.allocate(replicas)
    try:
        result = plan(job, framework, cluster, base_dir, environ, gpus, folder)
    except PluginError as error:
        raise CannotRun(str(error)) from error
    if result.problems:
        raise CannotRun("\n".join(str(p) for p in result.problems))
    if not result.launches:
        raise CannotRun(f"the {framework.name} plugin starts none of the job's replicas locally")
    if result.files:
        if folder is None:
            raise CannotRun(f"the {framework.name} plugin needs files written for a local run, and no folder was given")
        for name, content in result.files.items():
            (folder / name).write_text(content)
    if gpus is not None:
        shown = ", ".join(f"{r}={','.join(d) or 'none'}" for r, d in gpus.items())
        result.notices.append(f"CUDA_VISIBLE_DEVICES: {shown}")
    return result, cluster


def run_job(
    job: MLJob,
    framework: Framework,
    base_dir: Path,
    *,
    logs_dir: Path | None = None,
    out: TextIO | None = None,
    live: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunResult:
    """Run a checked job to its end and show it; raises :class:`CannotRun` before starting anything.

    The run's folder (the framework's files, the progress endpoint's token) lives as long as the run."""
    with tempfile.TemporaryDirectory(prefix=f"mljob-{job.name}-") as folder:
        try:
            server = ProgressServer(job.namespace, job.name, Path(folder))
        except OSError as error:
            raise CannotRun(f"cannot serve the progress endpoint on loopback: {error}") from error
        with server:
            return _run_job(job, framework, base_dir, Path(folder), server, logs_dir, out, live, environ)


def _run_job(
    job: MLJob,
    framework: Framework,
    base_dir: Path,
    folder: Path,
    server: ProgressServer,
    logs_dir: Path | None,
    out: TextIO | None,
    live: bool | None,
    environ: Mapping[str, str] | None,
) -> RunResult:
    environ = server.environ(os.environ if environ is None else environ)
    prepared, cluster = prepare(job, framework, base_dir, environ, folder)
    logs = None
    if logs_dir is not None:
        try:
            logs = LogFiles(logs_dir, prepared.launches)
        except OSError as error:
            if logs_dir.exists() and not logs_dir.is_dir():
                raise CannotRun(f"--logs-dir {logs_dir}: is a file; give a folder (created if missing)") from error
            where = error.filename if error.filename is not None else logs_dir
            raise CannotRun(f"--logs-dir {logs_dir}: cannot write {where}: {error.strerror or error}") from error
    with Display(out, live) as display:
        for notice in prepared.notices:
            display.say(notice)
        addresses = ", ".join(f"{r}={cluster.address(r)}" for r in prepared.launches)
        count = len(prepared.launches)
        display.say(f"{job.name}: {count} replica{'' if count == 1 else 's'} of {framework.name}: {addresses}")
        if logs is not None:
            display.say(f"logs: {logs.folder}/<replica>.log")
        supervisor = Supervisor(job, framework, prepared.launches, display, logs, progress=lambda: server.progress)
        result = asyncio.run(_supervise(supervisor, server))
        display.summary(result.rows, final(server.progress, result.finish.succeeded, server.now()))
        if result.finish.succeeded:
            display.say(f"job succeeded in {format_duration(result.elapsed)}", "bold green")
        else:
            display.say(f"job failed: {result.finish.message}", "bold red")
    return result


async def _supervise(supervisor: Supervisor, server: ProgressServer) -> RunResult:
    """The run, with its progress endpoint served in the same loop from before the first replica starts until
    the last has exited."""
    await server.start()
    try:
        return await supervisor.run()
    finally:
        await server.stop()


def run_file(
    path: str | Path,
    *,
    plugins: Plugins | None = None,
    logs_dir: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    live: bool | None = None,
) -> int:
    """What ``mljob run`` does; returns its exit status.

    0: the job succeeded. 1: it failed, or the file is not a valid MLJob, or it cannot run
    locally (the reasons on ``err``, as ``mljob validate`` words them). 130/143/129: stopped by
    SIGINT/SIGTERM/SIGHUP; 141: stopped because the output's reader went away. ``-`` reads the
    job from stdin and runs it in the current folder.
    """
    err = err if err is not None else sys.stderr
    try:
        checked = load_jobs(str(path), plugins)
        if len(checked) != 1:
            raise JobFileError([f"{path}: holds {len(checked)} MLJobs; mljob run runs one at a time"])
        job, framework = job_and_framework(checked[0])
    except JobFileError as error:
        err.writelines(f"{line}\n" for line in error.lines)
        return EXIT_FAILED
    base_dir = Path.cwd() if str(path) == STDIN else Path(path).resolve().parent
    try:
        result = run_job(job, framework, base_dir, logs_dir=logs_dir, out=out, live=live)
    except CannotRun as error:
        err.write(f"cannot run {job.name} locally:\n")
        err.writelines(f"  {line}\n" for line in str(error).splitlines())
        return EXIT_FAILED
    return result.exit_status
