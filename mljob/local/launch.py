"""What each replica runs locally: argv, environment and working directory, from its pod template.

It reads the wiring container the way the kubelet would — ``command`` + ``args`` with ``$(VAR)``
expanded from the container's env, the env's literal values in order, ``workingDir`` — and adds
the framework's wiring computed against a :class:`~mljob.local.cluster.LocalCluster`. What only a
cluster can supply (``valueFrom``, ``envFrom``, the image's entrypoint) is a problem with its
field path, reported before anything starts.

A framework may change how a replica runs on one machine (:meth:`Framework.local_wiring`): leave it
out, replace some of its variables, or have files written for it into the run's folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mljob.api import MLJob
from mljob.core.render import wiring_container
from mljob.framework import Framework, Problem, Replica, replicas_of
from mljob.local.cluster import LocalCluster
from mljob.local.gpus import VISIBLE
from mljob.plugins import PluginError

DEFAULT_GRACE_SECONDS = 10.0
"""Seconds between SIGTERM and SIGKILL when the template sets no terminationGracePeriodSeconds."""


@dataclass(frozen=True)
class Launch:
    """One replica's process: what to exec, with which environment, where."""

    replica: Replica
    argv: tuple[str, ...]
    env: Mapping[str, str]
    """The whole process environment: this process's, then the container's on top."""
    container_env: Mapping[str, str]
    """Only what the job sets: the framework's wiring, then the container's env."""
    cwd: Path
    grace_seconds: float = DEFAULT_GRACE_SECONDS


@dataclass
class Launches:
    """Every replica's launch, or the problems that stop the run; notices to say once."""

    launches: dict[Replica, Launch] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """What the framework asked to be written into the run's folder before anything starts."""
    left_out: list[Replica] = field(default_factory=list)
    """Replicas the framework does not start locally (:attr:`LocalWiring.run` false)."""


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion, byte for byte the kubelet's rule.

    ``$(NAME)`` becomes the variable's value when it is defined and stays as written when it is
    not; ``$$`` is an escaped ``$``; any other ``$`` is kept.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 == n:
            out.append(char)
            i += 1
            continue
        after = text[i + 1]
        if after == "$":
            out.append("$")
            i += 2
        elif after == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(variables.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + after)
            i += 2
    return "".join(out)


def container_env(
    container: Mapping[str, Any], wiring: Mapping[str, str], path: str
) -> tuple[dict[str, str], list[Problem]]:
    """The container's variables in kubelet order: wiring first, then ``env`` expanded in order."""
    env = dict(wiring)
    problems: list[Problem] = []
    if container.get("envFrom"):
        problems.append(Problem(f"{path}.envFrom", _cluster_only("envFrom", "config maps or secrets")))
    entries = container.get("env") or []
    for j, var in enumerate(entries):
        name = str(var.get("name"))
        if "valueFrom" in var:
            problems.append(
                Problem(
                    f"{path}.env[{j}].valueFrom", _cluster_only(f"{name} valueFrom", "fields, secrets or config maps")
                )
            )
            continue
        env[name] = expand(str(var.get("value", "")), env)
    return env, problems


def _cluster_only(what: str, source: str) -> str:
    return f"{what} is not supported by mljob run: there is no cluster to read {source} from; set a literal value"


def process_path(environ: Mapping[str, str], python: str = sys.executable) -> str:
    """``PATH`` with the folder of the Python running mljob first, so ``python`` and ``torchrun``
    in a command mean this environment's, as the image's would in a pod."""
    folder = str(Path(python).parent)
    entries = [p for p in environ.get("PATH", os.defpath).split(os.pathsep) if p]
    if entries and entries[0] == folder:
        return os.pathsep.join(entries)
    return os.pathsep.join([folder, *entries])


def plan(
    job: MLJob,
    framework: Framework,
    cluster: LocalCluster,
    base_dir: Path,
    environ: Mapping[str, str],
    gpus: Mapping[Replica, Sequence[str]] | None = None,
    folder: Path | None = None,
) -> Launches:
    """Every replica's :class:`Launch`, or every problem, with field paths.

    ``base_dir`` is the default working directory (the MLJob file's folder); ``gpus`` the
    devices each replica may see, when the job asks for any (the rest then see none); ``folder``
    the run's own folder, where the framework's :attr:`LocalWiring.files` will be written (the
    caller writes them: planning writes nothing).
    """
    folder = folder if folder is not None else base_dir
    result = Launches()
    base_env = dict(environ)
    base_env["PATH"] = process_path(environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")  # lines arrive as they are printed, not at exit
    images = sorted({str(c.get("image")) for c in _all_containers(job) if c.get("image")})
    result.notices.append(
        f"image{'s' if len(images) != 1 else ''} {', '.join(images)} not used locally: "
        f"replicas run in this environment ({Path(sys.executable).parent} first on PATH)"
    )
    for role, spec in job.spec.replica_specs.items():
        path = f"spec.replicaSpecs.{role}.template.spec"
        pod = spec.template.get("spec") or {}
        containers = pod.get("containers") or []
        index = wiring_container(containers, framework)
        if index is None:  # validation reports it; nothing to run
            continue
        skipped = [c.get("name", "?") for i, c in enumerate(containers) if i != index]
        skipped += [f"init container {c.get('name', '?')}" for c in pod.get("initContainers") or []]
        if skipped:
            result.notices.append(
                f"{role}: only container {containers[index].get('name')!r} runs locally, not {', '.join(skipped)}"
            )
        container = containers[index]
        cpath = f"{path}.containers[{index}]"
        grace = float(pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        replicas = [r for r in replicas_of(job) if r.role == role]
        for replica in replicas:
            try:
                wiring = dict(framework.env(job, replica, cluster))
            except Exception as error:
                raise PluginError(framework.name, "env", error) from error
            try:
                local = framework.local_wiring(job, replica, folder)
            except Exception as error:
                raise PluginError(framework.name, "local_wiring", error) from error
            if not local.run:
                result.left_out.append(replica)
                continue
            wiring.update(local.env)
            result.files.update(local.files)
            if gpus is not None:
                wiring[VISIBLE] = ",".join(gpus.get(replica, ()))
            env, problems = container_env(container, wiring, cpath)
            launch_or_problems = _launch(replica, container, env, base_env, base_dir, grace, cpath)
            problems += launch_or_problems[1]
            if problems:
                result.problems.extend(p for p in problems if p not in result.problems)
            elif launch_or_problems[0] is not None:
                result.launches[replica] = launch_or_problems[0]
    if result.left_out:
        names = ", ".join(map(str, result.left_out))
        result.notices.append(f"not started locally, as the {framework.name} plugin asks: {names}")
    return result


def _launch(
    replica: Replica,
    container: Mapping[str, Any],
    env: dict[str, str],
    base_env: Mapping[str, str],
    base_dir: Path,
    grace: float,
    path: str,
) -> tuple[Launch | None, list[Problem]]:
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        why = "required by mljob run: the image's entrypoint is not available locally"
        return None, [Problem(f"{path}.command", why)]
    argv = [expand(part, env) for part in (*command, *args)]
    working = container.get("workingDir")
    cwd = Path(str(working)) if working else base_dir
    if not cwd.is_absolute():
        cwd = base_dir / cwd
    if not cwd.is_dir():
        return None, [
            Problem(
                f"{path}.workingDir",
                f"{cwd} is not a folder on this machine; remove it to run in the MLJob file's folder",
            )
        ]
    process_env = {**base_env, **env}
    program = argv[0]
    if os.sep in program:
        found = str(cwd / program) if os.access(cwd / program, os.X_OK) else None
    else:
        found = shutil.which(program, path=process_env.get("PATH"))
    if found is None:
        return None, [Problem(f"{path}.command[0]", f"{program!r} is not an executable on PATH or in {cwd}")]
    return Launch(replica, (found, *argv[1:]), process_env, env, cwd, grace), []


def _all_containers(job: MLJob) -> list[Mapping[str, Any]]:
    return [
        c for spec in job.spec.replica_specs.values() for c in (spec.template.get("spec") or {}).get("containers") or []
    ]
